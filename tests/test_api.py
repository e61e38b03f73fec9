"""The Python API mirrors the CLI: embed returns its features, search and report exist and agree with the CLI."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import selfsup
from selfsup.config.build import FLAG_FIELDS
from selfsup.embed import read_embeddings

from .helpers import tiny_cli_run


def test_pretrain_takes_every_cli_flag_as_a_keyword():
    params = set(inspect.signature(selfsup.pretrain).parameters)
    assert set(FLAG_FIELDS) <= params
    assert {"preset", "config", "method", "out", "set", "resume"} <= params


@pytest.mark.integration
def test_embed_search_report_through_the_api(tmp_path_factory, tmp_path):
    data, run = tiny_cli_run(tmp_path_factory.mktemp("api"))
    res = selfsup.embed(str(run), str(data), str(tmp_path / "e.safetensors"))
    saved = read_embeddings(tmp_path / "e.safetensors")
    assert res["features"].shape == (res["n"], res["dim"]) and res["paths"] == list(saved["paths"])
    np.testing.assert_allclose(res["features"], np.asarray(saved["features"]), rtol=0, atol=0)
    query = res["paths"][3]
    hits = selfsup.search(str(tmp_path / "e.safetensors"), query, k=3)
    assert hits[0]["query"] == query and len(hits[0]["neighbours"]) == 3
    assert hits[0]["neighbours"][0]["path"] == query  # an indexed image is its own nearest neighbour
    assert hits[0]["neighbours"][0]["score"] == pytest.approx(1.0, abs=1e-3)
    page = selfsup.report(str(run))
    assert page == run / "report.html" and page.stat().st_size > 1000
