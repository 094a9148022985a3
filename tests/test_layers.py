"""The import rule: layers only point down. Every import in src/mobillm (lazy ones inside functions too; not the
annotation-only ones under ``if TYPE_CHECKING:``) is read with ast and each edge between two areas must be in
ALLOWED; a new area must be added to the table, and the table itself must be a hierarchy (no cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mobillm"

# area -> the areas it may import. An area is a subpackage or a top-level module of mobillm.
BASE = {"mobillm", "exceptions", "files", "procfs", "configs"}
TEXT = {"truncation"}  # shared by the torch batcher and the bundle's tokenizer
ALLOWED: dict[str, set[str]] = {
    "mobillm": set(),
    "exceptions": set(),
    "files": set(),
    "procfs": set(),
    "configs": {"exceptions"},
    "truncation": BASE,
    "ports": BASE,
    "metrics": BASE,
    "wire": BASE | {"sidenet", "train_config"},  # the Hello carries the typed configs
    "data": BASE | TEXT,
    # the device bundle's runtime: onnxruntime + numpy + tokenizers, never torch (tests/test_bundle.py checks it)
    "bundle": BASE | TEXT | {"wire"},
    "backbone": BASE | {"wire"},
    "sidenet": BASE,
    "train_config": BASE | {"sidenet"},
    "scoring": BASE | {"backbone", "sidenet", "metrics"},
    "device": BASE | {"backbone", "data", "metrics", "scoring", "sidenet", "wire"},
    "training": BASE | {"backbone", "metrics", "scoring", "sidenet", "train_config", "wire"},
    "server": BASE | {"backbone", "metrics", "scoring", "sidenet", "train_config", "training", "wire"},
    # writing a bundle: traces the device's TappedBackbone with torch.onnx
    "export": BASE | {"backbone", "bundle", "device", "wire"},
    # the privacy audit plays the curious server with the public model: it taps and encodes as the device does
    "privacy": BASE | {"backbone", "data", "device", "wire"},
    "recipes": BASE | {"backbone", "bundle", "data", "device", "metrics", "ports", "scoring", "sidenet", "train_config",
                       "training", "wire"},
    "bench": BASE | {"privacy", "backbone", "bundle", "export", "data", "device", "metrics", "ports", "recipes", "scoring", "sidenet",
                     "train_config", "training", "wire", "server"},
    "cli": BASE | {"privacy", "backbone", "bench", "bundle", "export", "data", "device", "metrics", "ports", "recipes", "scoring", "server",
                   "sidenet", "train_config", "training", "wire"},
    "__main__": {"cli"},
}


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _is_type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:``: imports for annotations only, never run, so no dependency at run time."""
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def import_edges(src: Path = SRC) -> list[tuple[str, str, str]]:
    """(importing module, imported module, where) for every import of a mobillm module, lazy ones included."""
    root = src.parent
    edges = []
    for path in sorted(src.rglob("*.py")):
        module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        type_only = {id(n) for block in ast.walk(tree) if _is_type_checking(block) for s in block.body for n in ast.walk(s)}
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [base]
            else:
                continue
            edges += [(module, t, f"{path.relative_to(root)}:{node.lineno}") for t in targets if t.startswith("mobillm")]
    return edges


def test_every_import_points_down_the_table():
    bad, unknown = [], set()
    for module, target, where in import_edges():
        a, b = _area(module), _area(target)
        if a not in ALLOWED:
            unknown.add(a)
        elif a != b and b not in ALLOWED[a]:
            bad.append(f"{where}: {a} -> {b} ({module} imports {target})")
    assert not unknown, f"areas missing from ALLOWED in tests/test_layers.py: {sorted(unknown)}"
    assert not bad, "imports that point the wrong way:\n" + "\n".join(bad)


def test_the_rule_catches_a_bad_edge(tmp_path):
    """The walker sees a lazy import inside a function: device importing server is reported."""
    pkg = tmp_path / "mobillm"
    (pkg / "device").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "device" / "__init__.py").write_text("")
    (pkg / "device" / "x.py").write_text("def f():\n    from mobillm.server.job import Job\n    from ..training import step\n")
    edges = {(m, t) for m, t, _ in import_edges(pkg)}
    assert ("mobillm.device.x", "mobillm.server.job") in edges
    assert ("mobillm.device.x", "mobillm.training") in edges
    assert "server" not in ALLOWED["device"] and "training" not in ALLOWED["device"]


def test_every_package_is_a_regular_package():
    missing = [str(d.relative_to(SRC)) for d in SRC.rglob("*") if d.is_dir() and d.name != "__pycache__"
               and any(d.glob("*.py")) and not (d / "__init__.py").is_file()]
    assert not missing, f"packages without __init__.py: {missing}"


def test_the_table_is_a_hierarchy():
    """No area may reach itself through the allowed edges: then every allowed import points down."""
    def reach(area: str, seen: set[str]) -> set[str]:
        for below in ALLOWED[area] - {area}:
            if below not in seen:
                seen.add(below)
                reach(below, seen)
        return seen

    assert not [a for a in ALLOWED if a in reach(a, set())], "ALLOWED has a cycle"
