"""Sites: every camera belongs to one; cameras registered before sites existed go to the default site."""

import django.db.models.deletion

import webapp.workloads.models
from django.db import migrations, models

DEFAULT_SITE = "default"


def cameras_to_default_site(apps, schema_editor):
    Camera = apps.get_model("workloads", "Camera")
    Site = apps.get_model("workloads", "Site")
    if Camera.objects.filter(site__isnull=True).exists():
        site, _ = Site.objects.get_or_create(name=DEFAULT_SITE)
        Camera.objects.filter(site__isnull=True).update(site=site)


class Migration(migrations.Migration):

    dependencies = [
        ("workloads", "0008_training_run"),
    ]

    operations = [
        migrations.CreateModel(
            name="Site",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=100, unique=True)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
            options={"ordering": ["name"]},
        ),
        migrations.AddField(
            model_name="camera",
            name="site",
            field=models.ForeignKey(
                null=True, on_delete=django.db.models.deletion.PROTECT, related_name="cameras", to="workloads.site",
            ),
        ),
        migrations.RunPython(cameras_to_default_site, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="camera",
            name="site",
            field=models.ForeignKey(
                default=webapp.workloads.models.default_site_id, on_delete=django.db.models.deletion.PROTECT,
                related_name="cameras", to="workloads.site",
            ),
        ),
    ]
