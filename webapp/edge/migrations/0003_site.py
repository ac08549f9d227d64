"""Agent tokens and edge nodes belong to a site (existing ones to the default site); a node keeps its newest
metrics report and when the fleet channel last summarised it."""

import django.db.models.deletion

import webapp.workloads.models
from django.db import migrations, models


def to_default_site(apps, schema_editor):
    Site = apps.get_model("workloads", "Site")
    for name in ("AgentToken", "EdgeNode"):
        rows = apps.get_model("edge", name).objects.filter(site__isnull=True)
        if rows.exists():
            rows.update(site=Site.objects.get_or_create(name="default")[0])
    EdgeNode = apps.get_model("edge", "EdgeNode")
    MetricSample = apps.get_model("edge", "MetricSample")
    for node in EdgeNode.objects.all():
        newest = MetricSample.objects.filter(node=node).order_by("-id").first()
        if newest is not None:
            EdgeNode.objects.filter(pk=node.pk).update(latest_sample=newest)



class Migration(migrations.Migration):

    dependencies = [
        ("edge", "0002_sample_payload_bytes"),
        ("workloads", "0009_site"),
    ]

    operations = [
        migrations.AddField(
            model_name="agenttoken", name="site",
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT,
                                    related_name="agent_tokens", to="workloads.site"),
        ),
        migrations.AddField(
            model_name="edgenode", name="site",
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT,
                                    related_name="nodes", to="workloads.site"),
        ),
        migrations.AddField(
            model_name="edgenode", name="latest_sample",
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL,
                                    related_name="+", to="edge.metricsample"),
        ),
        migrations.AddField(
            model_name="edgenode", name="summary_sent_at", field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunPython(to_default_site, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="agenttoken", name="site",
            field=models.ForeignKey(default=webapp.workloads.models.default_site_id,
                                    on_delete=django.db.models.deletion.PROTECT, related_name="agent_tokens",
                                    to="workloads.site"),
        ),
        migrations.AlterField(
            model_name="edgenode", name="site",
            field=models.ForeignKey(default=webapp.workloads.models.default_site_id,
                                    on_delete=django.db.models.deletion.PROTECT, related_name="nodes",
                                    to="workloads.site"),
        ),
    ]
