from django.db import migrations, models


def create_roles(apps, schema_editor):
    content_type_model = apps.get_model("contenttypes", "ContentType")
    permission_model = apps.get_model("auth", "Permission")
    group_model = apps.get_model("auth", "Group")
    content_type, _ = content_type_model.objects.get_or_create(app_label="accounts", model="role")
    operate, _ = permission_model.objects.get_or_create(
        content_type=content_type,
        codename="operate",
        defaults={"name": "Can change cameras, models, merge jobs and deployments"},
    )
    operator, _ = group_model.objects.get_or_create(name="operator")
    operator.permissions.add(operate)
    group_model.objects.get_or_create(name="viewer")


class Migration(migrations.Migration):
    initial = True
    dependencies = [("auth", "0012_alter_user_first_name_max_length"), ("contenttypes", "0002_remove_content_type_name")]
    operations = [
        migrations.CreateModel(
            name="Role",
            fields=[("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID"))],
            options={
                "managed": False,
                "default_permissions": (),
                "permissions": [("operate", "Can change cameras, models, merge jobs and deployments")],
            },
        ),
        migrations.RunPython(create_roles, migrations.RunPython.noop),
    ]
