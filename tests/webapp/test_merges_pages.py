"""Merge-job pages and API: who may start and cancel, what the API returns, and names rendered as text."""

from __future__ import annotations

import json
from pathlib import Path

from django.test import Client
from django.urls import reverse

from tests.webapp.test_merges_factories import make_bundle, make_job, make_ready_queries
from tests.webapp.test_workloads_factories import measured
from webapp.merges.models import MergeJob
from webapp.merges.selectors import merge_bundle_data, merge_bundle_deployable

Status = MergeJob.Status
HOSTILE = "<script>alert(1)</script>"
JSON = "application/json"


def test_it_shows_the_start_form_to_operators_only(client, operator, viewer):
    make_ready_queries()
    client.force_login(operator)
    page = client.get(reverse("merge_jobs"))
    assert page.status_code == 200 and b'id="merge-start-form"' in page.content
    assert b"q0_mobilenet_v3_small" in page.content and b'value="gemel+"' in page.content
    client.force_login(viewer)
    page = client.get(reverse("merge_jobs"))
    assert page.status_code == 200 and b"merge-start-form" not in page.content


def test_it_starts_a_job_from_the_form_and_opens_its_page(operator_client, django_capture_on_commit_callbacks):
    queries = make_ready_queries()
    with django_capture_on_commit_callbacks():
        response = operator_client.post(reverse("merge_jobs"), {
            "queries": [q.pk for q in queries], "strategy": "gemel", "budget_minutes": "2.5",
        })
    job = MergeJob.objects.get()
    assert response.status_code == 302 and response.url == reverse("merge_job_detail", args=[job.pk])
    assert (job.strategy, job.budget_minutes, job.queries.count(), job.accept_confidence) == ("gemel", 2.5, 3, None)


def test_a_job_started_at_a_confidence_says_so_on_its_page(operator_client, django_capture_on_commit_callbacks):
    queries = make_ready_queries()
    with django_capture_on_commit_callbacks():
        operator_client.post(reverse("merge_jobs"), {
            "queries": [q.pk for q in queries], "strategy": "gemel", "accept_confidence": "0.9",
        })
    job = MergeJob.objects.get()
    assert job.accept_confidence == 0.9
    page = operator_client.get(reverse("merge_job_detail", args=[job.pk])).content.decode()
    assert "accepts a round when every target is met at 90% confidence" in page
    response = operator_client.post(reverse("merge_jobs"), {
        "queries": [q.pk for q in queries], "strategy": "gemel", "accept_confidence": "0.5",
    })
    assert response.status_code == 400 and MergeJob.objects.count() == 1


def test_it_shows_what_is_wrong_with_the_start_form(operator_client, db):
    response = operator_client.post(reverse("merge_jobs"), {"strategy": "gemel", "budget_minutes": "-1"})
    assert response.status_code == 400
    assert b"tick the queries to merge, or &#x27;Every ready query&#x27;" in response.content
    assert not MergeJob.objects.exists()


def test_the_start_form_describes_each_strategy_and_can_take_every_ready_query(operator_client, db):
    queries = make_ready_queries()
    page = operator_client.get(reverse("merge_jobs")).content.decode()
    assert "gemel: The paper&#x27;s heuristic" in page and "all: Share every shareable layer" in page
    assert 'type="checkbox" name="queries"' in page and 'id="id_all_ready"' in page
    assert 'id="budget-hint"' not in page  # no finished job, and no model the demo build timed, to go by
    response = operator_client.post(reverse("merge_jobs"), {"all_ready": "on", "strategy": "gemel",
                                                            "budget_minutes": "2.5"})
    assert response.status_code == 302
    assert set(MergeJob.objects.get().queries.all()) == set(queries)


def test_the_start_form_suggests_a_budget_from_the_jobs_that_saved_memory_here(operator_client, db):
    for first_saving in (120.0, 240.0, 600.0):
        MergeJob.objects.create(status=MergeJob.Status.SUCCEEDED,
                                result={"timeline": [[0.0, 0.0], [first_saving, 1e6], [900.0, 2e6]]})
    MergeJob.objects.create(status=MergeJob.Status.SUCCEEDED, result={"timeline": [[0.0, 0.0]]})  # saved nothing
    page = operator_client.get(reverse("merge_jobs")).content.decode()
    assert "first saved memory after a median of 4.0 min (3 job(s))" in page


def test_a_first_job_gets_a_budget_hint_from_the_training_pace_the_demo_build_measured(operator_client, db):
    from gemel_engine.search import RetrainBudget

    queries = make_ready_queries()
    # 10 ms a classifier frame, 0.5 s a detector frame: 32 × 0.01 × 2 + 8 × 0.5 = 4.64 s a step, 120 steps.
    for query, seconds in zip(queries, (0.01, 0.01, 0.5), strict=True):
        query.train_frame_seconds = seconds
        if seconds == 0.5:
            query.task = {**query.task, "kind": "detection"}
        query.save()
    assert RetrainBudget().max_steps == 120 and RetrainBudget().batch_size == 32
    page = operator_client.get(reverse("merge_jobs")).content.decode()
    assert 'id="budget-hint"' in page and "No job has saved memory here yet" in page
    assert "the training pace the demo build measured" in page  # says what it is based on
    assert "all 3 timed queries together runs up to 120 steps in about 9.3 min" in page
    assert "give it more than 10 min" in page and "gemel+ sizes each trial to the time left" in page
    queries[0].train_frame_seconds = None
    queries[0].save()
    page = operator_client.get(reverse("merge_jobs")).content.decode()
    assert "all 2 timed queries together (1 other ready query not timed)" in page
    MergeJob.objects.create(status=MergeJob.Status.SUCCEEDED, result={"timeline": [[0.0, 0.0], [300.0, 1e6]]})
    page = operator_client.get(reverse("merge_jobs")).content.decode()  # a job's own history wins once there is one
    assert "first saved memory after a median of 5.0 min (1 job(s))" in page and "demo build" not in page


def test_it_refuses_a_viewer_who_posts_the_start_form_or_cancels(viewer_client, db):
    queries = make_ready_queries()
    response = viewer_client.post(reverse("merge_jobs"), {"queries": [q.pk for q in queries], "strategy": "gemel"})
    assert response.status_code == 403 and not MergeJob.objects.exists()
    job = make_job()
    assert viewer_client.post(reverse("merge_job_cancel", args=[job.pk])).status_code == 403
    job.refresh_from_db()
    assert job.status == Status.QUEUED


def test_it_cancels_a_job_from_its_page(operator_client, db):
    job = make_job()
    response = operator_client.post(reverse("merge_job_cancel", args=[job.pk]))
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.status == Status.CANCELLED


def test_it_renders_hostile_query_names_as_text(operator_client, db):
    [query] = make_ready_queries(("mobilenet_v3_small",), names=[HOSTILE])
    job = make_job(queries=[query], status=Status.RUNNING)
    make_bundle(job, accuracies={HOSTILE: 0.5}, required={HOSTILE: 0.4})
    for url in (reverse("merge_jobs"), reverse("merge_job_detail", args=[job.pk])):
        html = operator_client.get(url).content.decode()
        assert HOSTILE not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    html = operator_client.get(reverse("merge_job_detail", args=[job.pk])).content.decode()
    start = html.index('<script id="merge-job-data" type="application/json">')
    blob = html[start:html.index("</script>", start)].split(">", 1)[1]
    assert "<" not in blob  # json_script escapes it as \u003C
    data = json.loads(blob)
    assert data["queries"][0]["name"] == HOSTILE and HOSTILE in data["bundles"][0]["accuracies"]
    assert 'id="savings-chart"' in html and 'data-points="0"' in html and 'id="accuracy-chart"' in html
    assert 'id="cancel-job"' in html and 'id="job-status"' in html


def test_the_job_page_shows_the_set_up_stage_and_the_rounds_time_left_as_they_arrive(operator_client, db):
    from django.contrib.staticfiles import finders

    from webapp.merges.services import ProgressRecorder

    job = make_job(queries=make_ready_queries(), status=Status.RUNNING, attempts=1)
    record = ProgressRecorder(job.pk, 1)
    record({"type": "search.preparing", "stage": "measuring the unmerged model q0", "done": 1, "total": 3, "at": 0})
    record({"type": "round.progress", "round": 1, "steps": 20, "max_steps": 120, "accuracy": {}, "required": {},
            "elapsed": 70.0, "budget_left": 500.0, "round_seconds_left": 300.0, "at": 0})
    html = operator_client.get(reverse("merge_job_detail", args=[job.pk])).content.decode()
    assert '<p id="job-progress"' in html  # the line the script fills from the newest event
    data = json.loads(html[html.index('id="merge-job-data"'):].split(">", 1)[1].split("</script>", 1)[0])
    events = {e["type"]: e["payload"] for e in data["events"]}
    assert events["search.preparing"]["stage"] == "measuring the unmerged model q0"
    assert events["round.progress"]["round_seconds_left"] == 300.0
    script = Path(finders.find("js/merge_job.js")).read_text()
    assert 'case "search.preparing"' in script and "p.round_seconds_left" in script


def test_the_job_page_has_no_cancel_button_for_viewers(viewer_client, db):
    job = make_job()
    html = viewer_client.get(reverse("merge_job_detail", args=[job.pk])).content.decode()
    assert 'id="job-status"' in html and 'id="cancel-job"' not in html


def test_it_answers_404_for_an_unknown_job(operator_client, db):
    assert operator_client.get(reverse("merge_job_detail", args=[999])).status_code == 404
    assert operator_client.get("/api/merge-jobs/999").status_code == 404


def test_the_api_refuses_anonymous_users_and_viewer_writes(viewer_client, db):
    queries = make_ready_queries()
    job = make_job()
    assert Client().get("/api/merge-jobs").status_code == 401
    body = {"queries": [q.pk for q in queries], "strategy": "gemel"}
    response = viewer_client.post("/api/merge-jobs", body, content_type=JSON)
    assert response.status_code == 403 and "operators only" in response.json()["detail"]
    assert viewer_client.post(f"/api/merge-jobs/{job.pk}/cancel").status_code == 403
    assert viewer_client.get(f"/api/merge-jobs/{job.pk}").status_code == 200
    assert MergeJob.objects.count() == 1


def test_the_api_starts_a_job_and_explains_what_it_refuses(operator_client, django_capture_on_commit_callbacks):
    queries = make_ready_queries()
    ids = [q.pk for q in queries]
    with django_capture_on_commit_callbacks():
        response = operator_client.post("/api/merge-jobs", {"queries": ids, "strategy": "gemel", "budget_minutes": 1},
                                        content_type=JSON)
    assert response.status_code == 201, response.content
    job = response.json()
    assert job["status"] == "queued" and sorted(q["id"] for q in job["queries"]) == sorted(ids)
    refused = operator_client.post("/api/merge-jobs", {"queries": ids, "strategy": "magic"}, content_type=JSON)
    assert refused.status_code == 400 and "unknown strategy" in refused.json()["detail"]
    refused = operator_client.post("/api/merge-jobs", {"queries": [9999]}, content_type=JSON)
    assert refused.status_code == 400 and "9999" in refused.json()["detail"]
    assert job["accept_confidence"] is None
    refused = operator_client.post("/api/merge-jobs", {"queries": ids, "accept_confidence": 1.5}, content_type=JSON)
    assert refused.status_code == 400 and "confidence in [0.5, 1)" in refused.json()["detail"]


def test_the_api_lists_events_after_a_sequence_number_and_cancels_once(operator_client, db):
    job = make_job()
    response = operator_client.post(f"/api/merge-jobs/{job.pk}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert operator_client.post(f"/api/merge-jobs/{job.pk}/cancel").status_code == 409
    events = operator_client.get(f"/api/merge-jobs/{job.pk}/events?after=0").json()
    assert [e["type"] for e in events] == ["job.cancelled"] and events[0]["seq"] == 1
    assert operator_client.get(f"/api/merge-jobs/{job.pk}/events?after=1").json() == []
    assert [j["id"] for j in operator_client.get("/api/merge-jobs").json()] == [job.pk]


def test_a_bundle_below_a_target_is_not_deployable_and_says_why(operator_client, db):
    queries = make_ready_queries(("mobilenet_v3_small", "mobilenet_v2"), names=["north", "east"])
    for query, unmerged in zip(queries, (0.8, 0.75), strict=True):  # the gate reads the queries' targets now
        query.target_fraction, query.unmerged_accuracy, query.unmerged_test = 1.0, unmerged, measured(unmerged)
        query.save()
    job = make_job(queries=queries, status=Status.SUCCEEDED)
    below = make_bundle(job, index=1, accuracies={"north": 0.9, "east": 0.7}, required={"north": 0.8, "east": 0.75})
    ok, reason = merge_bundle_deployable(below)
    assert not ok and "east" in reason and "north" not in reason
    unsaved = make_bundle(job, index=2, accuracies={"north": 0.9, "east": 0.8}, required={"north": 0.8, "east": 0.75})
    ok, reason = merge_bundle_deployable(unsaved)
    assert not ok and "missing" in reason
    listed = operator_client.get(f"/api/merge-jobs/{job.pk}/bundles").json()
    assert [(b["index"], b["deployable"], b["meets_targets"]) for b in listed] == [(1, False, False), (2, False, True)]


def test_the_deploy_gate_reads_held_out_test_accuracy_not_the_validation_accuracy_the_search_decided_on(db):
    queries = make_ready_queries(("mobilenet_v3_small", "mobilenet_v2"), names=["north", "east"])
    for query in queries:
        query.target_fraction, query.unmerged_accuracy, query.unmerged_test = 1.0, 0.8, measured(0.8)
        query.save()
    job = make_job(queries=queries, status=Status.SUCCEEDED)
    lucky = make_bundle(job, index=1, accuracies={"north": 0.85, "east": 0.85}, required={"north": 0.8, "east": 0.8},
                        test_accuracies={"north": 0.85, "east": 0.74})
    ok, reason = merge_bundle_deployable(lucky)
    assert not ok and "east: test accuracy 0.740" in reason and "short by 0.060" in reason and "north" not in reason
    data = merge_bundle_data(lucky)
    assert data["meets_targets"] is False and data["test_accuracies"]["east"]["interval"] == [0.69, 0.79]
    untested = make_bundle(job, index=2, accuracies={"north": 0.9, "east": 0.9}, required={"north": 0.8, "east": 0.8},
                           test_accuracies={})
    ok, reason = merge_bundle_deployable(untested)
    assert not ok and "not measured on held-out test frames" in reason
