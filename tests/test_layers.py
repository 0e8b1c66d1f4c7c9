"""The package's layers hold (docs/architecture.md, DESIGN.md): every ``import`` in src/ddpm, at module level or
inside a function, is read from the source and checked against the layer rules. Training and evaluation are
siblings, the shared services and the math sit below them, and the library never imports Diffusers."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ddpm"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The absolute names of every module ``path`` imports (relative imports resolved)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.add(module)
            # ``from ddpm import training`` imports the sub-module ddpm.training
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


GRAPH = {_module_name(p): _imports(p) for p in sorted(SRC.rglob("*.py"))}


def _in(module: str, layer: str) -> bool:
    return module == layer or module.startswith(layer + ".")


def _violations(importers: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if any(_in(module, layer) for layer in importers)
        for target in targets
        if any(_in(target, layer) for layer in forbidden)
    )


def test_the_import_graph_was_read():
    assert "ddpm.training.trainer" in GRAPH and "ddpm.evaluation.nll" in GRAPH
    assert "ddpm.likelihood" in GRAPH["ddpm.evaluation.nll"]
    assert "ddpm.schedulers.diffusion_math" in GRAPH["ddpm.likelihood"]
    assert "ddpm.distributed" in GRAPH["ddpm.training.trainer"]  # from ddpm import distributed as ddist


@pytest.mark.parametrize(
    ("importers", "forbidden"),
    [
        # training and evaluation are siblings
        (("ddpm.evaluation",), ("ddpm.training",)),
        (("ddpm.training",), ("ddpm.evaluation",)),
        # the math and the network know nothing of what uses them
        (("ddpm.schedulers", "ddpm.models"), ("ddpm.pipeline", "ddpm.training", "ddpm.evaluation", "ddpm.cli")),
        (("ddpm.likelihood",), ("ddpm.models", "ddpm.pipeline", "ddpm.training", "ddpm.evaluation", "ddpm.cli")),
        # the shared services sit at the base
        (
            ("ddpm.data", "ddpm.data_hf", "ddpm.distributed", "ddpm.threads"),
            ("ddpm.schedulers", "ddpm.models", "ddpm.pipeline", "ddpm.training", "ddpm.evaluation", "ddpm.cli"),
        ),
        # only the command line imports the command line
        (
            ("ddpm.schedulers", "ddpm.models", "ddpm.pipeline", "ddpm.training", "ddpm.evaluation", "ddpm.likelihood"),
            ("ddpm.cli",),
        ),
    ],
)
def test_layer_rule(importers, forbidden):
    assert _violations(importers, forbidden) == []


def test_likelihood_imports_only_the_scheduler_family():
    ours = {m for m in GRAPH["ddpm.likelihood"] if _in(m, "ddpm")}
    assert ours and all(_in(m, "ddpm.schedulers") for m in ours), ours


def test_the_library_never_imports_diffusers():
    assert _violations(("ddpm",), ("diffusers",)) == []
