from __future__ import annotations

import torch
from torch import nn

from gemel_engine.memory import footprint, layer_memory, model_param_bytes, tensor_bytes, unique_storage_bytes
from gemel_engine.modelset import ModelSet


def test_a_tensor_seen_twice_counts_once():
    t = torch.zeros(10, dtype=torch.float32)
    assert unique_storage_bytes([t, t, t.view(2, 5)]) == 40


def test_distinct_tensors_of_equal_values_count_separately():
    assert unique_storage_bytes([torch.zeros(10), torch.zeros(10)]) == 80


def test_a_view_counts_its_whole_storage():
    base = torch.zeros(100)
    assert unique_storage_bytes([base[:10]]) == 400


def test_the_footprint_of_a_tied_set_is_measured_from_storages():
    a, b = nn.Linear(100, 100), nn.Linear(100, 100)
    untied = footprint({"a": a, "b": b})
    assert untied.param_bytes == untied.naive_param_bytes == 2 * model_param_bytes(a)
    b.weight = a.weight
    tied = footprint(ModelSet({"a": a, "b": b}))
    assert tied.naive_param_bytes == untied.naive_param_bytes
    assert tied.saved_param_bytes == tensor_bytes(a.weight)


def test_layer_memory_reports_parameters_and_buffers_per_module():
    model = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4))
    rows = {row.path: row for row in layer_memory(model)}
    assert rows["0"].param_bytes == 3 * 4 * 4 and rows["0"].buffer_bytes == 0
    assert rows["1"].param_bytes == 2 * 4 * 4
    assert rows["1"].buffer_bytes == 2 * 4 * 4 + 8  # running mean/var + num_batches_tracked (int64)
