"""Merge jobs belong to the site of their queries; jobs from before sites take their first query's site."""

import django.db.models.deletion

import webapp.workloads.models
from django.db import migrations, models


def jobs_to_their_queries_site(apps, schema_editor):
    MergeJob = apps.get_model("merges", "MergeJob")
    Site = apps.get_model("workloads", "Site")
    for job in MergeJob.objects.filter(site__isnull=True):
        query = job.queries.select_related("camera").order_by("pk").first()
        site_id = query.camera.site_id if query is not None else Site.objects.get_or_create(name="default")[0].pk
        MergeJob.objects.filter(pk=job.pk).update(site_id=site_id)


class Migration(migrations.Migration):

    dependencies = [
        ("merges", "0005_accept_confidence"),
        ("workloads", "0009_site"),
    ]

    operations = [
        migrations.AddField(
            model_name="mergejob",
            name="site",
            field=models.ForeignKey(
                null=True, on_delete=django.db.models.deletion.PROTECT, related_name="merge_jobs", to="workloads.site",
            ),
        ),
        migrations.RunPython(jobs_to_their_queries_site, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="mergejob",
            name="site",
            field=models.ForeignKey(
                default=webapp.workloads.models.default_site_id, on_delete=django.db.models.deletion.PROTECT,
                related_name="merge_jobs", to="workloads.site",
            ),
        ),
    ]
