"""Bad text input through the real CLI (`mlpipe run`): exit 2, a short error naming the file, key or
value, nothing registered, and the data an earlier ingest prepared left as it was. Each case fails in
config loading or in the ingest stage. One case goes through the whole flow (`mlpipe run` in its own
process: the ingest task's error reaches the CLI as exit 2); the others through `mlpipe stage ingest`,
the same ingest code and error path, invoked in this process (Typer's runner: no process start and
imports per case, ~10-20 s each on 2 cores)."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from flows.cli import app
from tests.code.test_text_data import corpus
from tests.conftest import cli, client_for

pytestmark = pytest.mark.slow

TEXT = ["--set", "data.text_column=text", "--set", "data.vocab_size=160", "--set", "data.max_length=16"]


def folder(root, files: dict[str, bytes]):
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return root


def test_bad_text_input_exits_2_and_changes_nothing(project, prefect_api):
    api = {"PREFECT_API_URL": prefect_api}
    good = corpus(60)
    good.to_csv(project / "good.csv", index=False)
    # an earlier run's prepared data: every failed run below must leave it as it was
    r = cli("stage", "ingest", "--set", "data.source=csv:good.csv", *TEXT, cwd=project)
    assert r.returncode == 0, r.stderr[-2000:]
    before = {p.name: p.read_bytes() for p in (project / "data" / "prepared").iterdir()}

    good.rename(columns={"text": "body"}).to_csv(project / "nocol.csv", index=False)
    good.assign(text="  ").to_csv(project / "empty.csv", index=False)
    good.assign(text=range(60)).to_csv(project / "numbers.csv", index=False)
    texts = {f"{row.label}/{i:02d}.txt": row.text.encode() for i, row in good.iterrows()}
    latin1 = folder(project / "latin1", {**texts, "sport/99.txt": "caf\u00e9 ball".encode("latin-1")})
    no_txt = folder(project / "notxt", {**{k: v for k, v in texts.items() if k.startswith("sport")}, "tech/a.md": b"x"})
    cases = [
        (["data.source=csv:nocol.csv"], "nocol.csv: text column 'text' (data.text_column) not found"),
        (["data.source=csv:empty.csv"], "empty.csv: text column 'text' (data.text_column) is empty"),
        (["data.source=csv:numbers.csv"], "numbers.csv: text column 'text' (data.text_column) holds numbers only"),
        ([f"data.source=textfolder:{latin1}"], "99.txt: not UTF-8 text (byte 0xe9 at offset 3)"),
        ([f"data.source=textfolder:{no_txt}"], "class folder 'tech' has no .txt files"),
        (["data.source=csv:good.csv", "data.vocab_size=50000"], "data.vocab_size 50000: the "),
        (
            ["data.source=csv:good.csv", "data.max_length=1"],
            "data.max_length: Input should be greater than or equal to 2",
        ),
    ]
    for i, (sets, message) in enumerate(cases):
        args = [a for s in sets for a in ("--set", s)]
        if i == 0:
            r = cli("run", *TEXT, *args, cwd=project, env=api)
            code, stdout, stderr = r.returncode, r.stdout, r.stderr
        else:
            r = CliRunner().invoke(app, ["stage", "ingest", *TEXT, *args])
            code, stdout, stderr = r.exit_code, r.stdout, r.stderr
        assert code == 2, (sets, stdout[-1000:], stderr[-2000:])
        assert message in " ".join(stderr.split()), (sets, stderr[-2000:])
    assert {p.name: p.read_bytes() for p in (project / "data" / "prepared").iterdir()} == before
    assert client_for(project).search_registered_models() == []
    assert pd.read_parquet(project / "data" / "prepared" / "texts_train.parquet")["text"].str.len().min() > 0
