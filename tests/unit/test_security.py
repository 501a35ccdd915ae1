"""Security: parameter paths stay inside their roots; nothing is ever unpickled."""

from __future__ import annotations

import ast

import pytest

from tasks.common.errors import PipelineError
from tasks.common.paths import DATA_ROOTS_ENV, confine, data_roots, output_roots, resolve_inputs
from tests.conftest import REPO


@pytest.fixture
def root(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "ok.csv").write_text("x")
    (tmp_path / "secret.csv").write_text("secret")
    return data


@pytest.mark.parametrize(
    "path",
    [
        "/etc/passwd",
        "{root}/../secret.csv",
        "{root}/link-out.csv",
        "{root}/../*.csv",
        "/etc/*",
        ["{root}/ok.csv", "/etc/passwd"],
    ],
)
def test_paths_outside_the_data_root_are_refused_before_reading(root, path):
    (root / "link-out.csv").symlink_to(root.parent / "secret.csv")
    data = [p.format(root=root) for p in path] if isinstance(path, list) else path.format(root=root)
    with pytest.raises(PipelineError, match=r"parameter data: .* is outside the allowed folders"):
        resolve_inputs(data, [root.resolve()])


def test_paths_inside_the_root_pass_including_symlinks_within_it(root):
    (root / "alias.csv").symlink_to(root / "ok.csv")
    assert resolve_inputs(str(root / "alias.csv"), [root.resolve()]) == [root / "alias.csv"]
    assert confine(root / "sub" / "x", [root.resolve()], "output") == root / "sub" / "x"


def test_roots_come_from_the_environment_or_default_to_data_and_output(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ROOTS_ENV, f"{tmp_path}/a:{tmp_path}/b")
    assert data_roots() == [(tmp_path / "a").resolve(), (tmp_path / "b").resolve()]
    monkeypatch.delenv("SALES_MODEL_OUTPUT_ROOTS")
    monkeypatch.chdir(tmp_path)
    assert output_roots() == [(tmp_path / "output").resolve()]
    with pytest.raises(PipelineError, match="set SALES_MODEL_OUTPUT_ROOTS to allow another"):
        confine("/tmp/elsewhere", output_roots(), "output")


FORBIDDEN_CALLS = {"load", "loads", "read_pickle", "Unpickler"}
FORBIDDEN_MODULES = {"pickle", "cPickle", "dill", "joblib", "cloudpickle", "shelve", "marshal"}


def _safe_loads(tree: ast.AST) -> set[int]:
    """The `np.load` attributes of calls that pass allow_pickle=False (numpy then refuses
    pickled arrays), by node id."""
    safe = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        refuses = any(
            k.arg == "allow_pickle" and isinstance(k.value, ast.Constant) and k.value.value is False
            for k in node.keywords
        )
        if refuses and node.func.attr == "load" and ast.unparse(node.func.value) in {"np", "numpy"}:
            safe.add(id(node.func))
    return safe


def test_no_pickle_anywhere_in_the_code():
    offenders = []
    for path in [*REPO.glob("flows/*.py"), *REPO.glob("tasks/*.py"), *REPO.glob("schemas/*.py")]:
        tree = ast.parse(path.read_text())
        safe = _safe_loads(tree)
        for node in ast.walk(tree):
            if id(node) in safe:
                continue
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if FORBIDDEN_MODULES & {n.split(".")[0] for n in names}:
                    offenders.append(f"{path.name}:{node.lineno} imports {names}")
            if isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_CALLS:
                owner = ast.unparse(node.value)
                if owner in {"torch", "pickle", "pd", "pandas", "np", "numpy"}:
                    offenders.append(f"{path.name}:{node.lineno} calls {owner}.{node.attr}")
    assert offenders == []


def test_the_pickle_scan_flags_np_load_unless_pickles_are_refused():
    flagged = ast.parse("np.load(path)\nnp.load(path, allow_pickle=True)")
    allowed = ast.parse("np.load(path, allow_pickle=False)")
    assert len(_safe_loads(flagged)) == 0
    assert len(_safe_loads(allowed)) == 1
