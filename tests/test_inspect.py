"""Exercise 1, questions 1-5, answered from the code."""

from __future__ import annotations

import json

from mnistlab.lab.inspect import inspect


def test_inspect_notebook_json(cli):
    code, out, err = cli("inspect", "--preset", "notebook", "--format", "json")
    assert code == 0, err
    info = json.loads(out)
    assert info["batch_size"] == 32 and info["epochs"] == 5
    conv, flat, d1, d2 = info["layers"]
    assert conv["type"] == "Conv2d" and conv["kernel_size"] == [3, 3] and conv["stride"] == [1, 1]
    assert conv["input_shape"] == [1, 28, 28] and conv["output_shape"] == [32, 26, 26]
    assert conv["activation"] == "relu" and conv["units"] == 32 and conv["params"] == 320
    assert flat["output_shape"] == [21632]
    assert d1["input_shape"] == [21632] and d1["units"] == 128 and d1["activation"] == "relu"
    assert d1["params"] == 2_769_024
    assert d2["units"] == 10 and d2["params"] == 1_290 and d2["activation"] is None
    assert info["total_params"] == 2_770_634 and info["weight_layers"] == 3
    assert info["optimizer"]["name"] == "Adam"
    params = info["optimizer"]["params"]
    assert params["lr"] == 0.001 and params["betas"] == [0.9, 0.999] and params["eps"] == 1e-8
    assert params["weight_decay"] == 0 and params["amsgrad"] is False
    # FLOPs: conv 2*9*32*676 + d1 2*21632*128 + d2 2*128*10
    assert info["flops_per_image"] == 2 * 9 * 32 * 676 + 2 * 21632 * 128 + 2 * 128 * 10


def test_inspect_follows_overrides_and_other_models(cli):
    info = inspect("pytorch-example", optimizer="sgd", lr=0.1, opt_args={"momentum": 0.9})
    assert info["optimizer"]["name"] == "SGD" and info["optimizer"]["params"]["momentum"] == 0.9
    names = [row["name"] for row in info["layers"]]
    assert names[:2] == ["conv1", "conv2"] and info["total_params"] == 1_199_882
    code, md, _ = cli("inspect", "--format", "md")
    assert code == 0 and "| conv1 | Conv2d | 1x28x28 | 32x26x26 | 32 | relu | 3x3 | 1x1 | 0x0 | 320 |" in md
