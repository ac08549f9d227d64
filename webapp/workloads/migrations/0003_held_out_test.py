"""Held-out test frames: queries record their unmerged model's test accuracy.

Queries measured before (validation frames only) go back to pending so a worker measures them again on
validation and test frames; every Celery worker queues the pending queries when it starts.
"""

from django.db import migrations, models

REMEASURE = "measured before held-out test frames existed; waiting to measure again"


def queue_for_remeasure(apps, schema_editor):
    Query = apps.get_model("workloads", "Query")
    Query.objects.filter(status="ready", unmerged_test__isnull=True).update(status="pending", status_detail=REMEASURE)


class Migration(migrations.Migration):

    dependencies = [
        ('workloads', '0002_camera_sampling_demo_seed'),
    ]

    operations = [
        migrations.AddField(
            model_name='query',
            name='unmerged_test',
            field=models.JSONField(blank=True, null=True),
        ),
        migrations.RunPython(queue_for_remeasure, migrations.RunPython.noop),
    ]
