"""The report tests' shared pipeline run (report_pages.make_pipeline_run), made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from report_pages import make_pipeline_run


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pipeline_run(tmp_path_factory.mktemp("report_pipeline"))
