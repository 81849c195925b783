"""The documentation site cannot rot: it builds with `mkdocs build --strict`, its generated references match the
code, every command written in it (and in the README) parses against the real CLI with real config keys, every
bundled config and image it names exists, and the built site opens in a headless Chromium with its formulas
rendered (screenshots in $CNNCTL_SCREENSHOTS, default tmp/screenshots/)."""

from __future__ import annotations

import functools
import http.server
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
FENCE = re.compile(r"^([ \t]*)(```|~~~)[^\n]*\n(.*?)^\1\2[ \t]*$", re.M | re.S)
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)|<img [^>]*src=\"([^\"]+)\"")


def _gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- command lines written in the docs

def command_lines(text: str) -> list[str]:
    """The `cnnctl ...` lines of a Markdown text's fenced code blocks (`$ cnnctl`, `torchrun ... -m cnnctl` too),
    backslash continuations joined, with the words after `cnnctl`."""
    found = []
    for block in FENCE.finditer(text):
        for line in block.group(3).replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("cnnctl "):
                found.append(line)
            elif " -m cnnctl " in line:
                found.append("cnnctl " + line.split(" -m cnnctl ", 1)[1])
    return found


def _exit_when_given(ctx, param, value):
    if value:
        ctx.exit(0)


@functools.cache
def _cli():
    """The click command the Typer app builds, once; --install-completion and --show-completion stop as they do,
    without writing to the shell's files."""
    import typer.main

    from cnnctl.cli import app

    group = typer.main.get_command(app)
    for param in group.params:
        if param.callback is not None:
            param.callback = _exit_when_given
    return group


@functools.cache
def _config_keys() -> frozenset[str]:
    from cnnctl.completion import config_keys

    return frozenset(config_keys())


def check_command(line: str) -> str | None:
    """None when ``line`` parses against the Typer app (click's own parser; paths are not opened) and each of its
    `--set KEY=...` keys is a config key or section; else what is wrong."""
    group = _cli()
    try:
        words = shlex.split(line, comments=True)[1:]
        if words and words[-1] == "&":
            words.pop()
        root = group.make_context("cnnctl", list(words), resilient_parsing=False)
        name, command, rest = group.resolve_command(root, [*root._protected_args, *root.args])
        ctx = command.make_context(name, rest, parent=root, resilient_parsing=False)
    except Exception as error:  # shlex's quoting, click's UsageError, NoSuchOption...: the message says which
        if getattr(error, "exit_code", None) == 0:  # --help, and the completion options: a whole command line
            return None
        return f"{type(error).__name__}: {error.format_message() if hasattr(error, 'format_message') else error}"
    keys = _config_keys()
    for override in ctx.params.get("set_") or ():
        key = override.partition("=")[0]
        if key not in keys and not any(k.startswith(key + ".") for k in keys):
            return f"--set {override}: {key} is not a config key"
    return None


def test_every_command_line_in_the_docs_and_readme_parses():
    sources = [*PAGES, ROOT / "README.md"]
    lines = [(path, line) for path in sources for line in command_lines(path.read_text(encoding="utf-8"))]
    assert len(lines) > 40  # the pages do show commands: a broken extraction would pass an empty list
    problems = [f"{path.relative_to(ROOT)}: {line}\n    {problem}" for path, line in lines
                if (problem := check_command(line))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("line", "words"), [
    ("cnnctl train lenet5-digits --sett optimizer.lr=0.1", "No such option: --sett"),
    ("cnnctl trian lenet5-digits", "No such command 'trian'"),
    ("cnnctl eval", "Missing argument"),
    ("cnnctl --bogus train lenet5-digits", "No such option: --bogus"),
    ("cnnctl train lenet5-digits --set optimizer.lrr=0.1", "optimizer.lrr is not a config key"),
    ("cnnctl tune lenet5-digits --space lenet5-digits --method anneal", "anneal"),
])
def test_a_wrong_command_line_is_caught(line, words):
    assert words in (check_command(line) or "")


def test_command_lines_are_found_in_fences_only():
    text = ("Run `cnnctl bogus` inline.\n\n```\n$ cnnctl train lenet5-digits  # comment\nerror: x\n"
            "torchrun --standalone -m cnnctl train lenet5-digits \\\n    --set train.epochs=2\n```\n")
    assert command_lines(text) == ["cnnctl train lenet5-digits  # comment",
                                   "cnnctl train lenet5-digits      --set train.epochs=2"]
    assert check_command(command_lines(text)[1]) is None


# ---------------------------------------------------------------- generated references, configs, images

def test_generated_references_match_the_code(capsys):
    assert _gen_docs().main(["--check"]) == 0, capsys.readouterr().err


def test_config_reference_names_every_key_of_the_schema():
    from cnnctl.completion import config_keys

    page = (DOCS / "reference" / "config.md").read_text(encoding="utf-8")
    keys = config_keys()
    assert "optimizer.lr" in keys and "train.early_stopping.patience" in keys
    assert [k for k in keys if f"| `{k}` |" not in page] == []


def test_every_config_key_has_a_meaning():
    """The schema's field docstrings are the config reference's meaning column: a new key needs one."""
    from cnnctl.completion import config_keys
    from cnnctl.config import Config

    field = _gen_docs()._field
    assert [k for k in config_keys() if not (field(Config, k).description or "").strip()] == []


def test_cli_reference_names_every_command_and_option():
    import typer.main

    from cnnctl.cli import app

    page = (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    group = typer.main.get_command(app)
    root = group.make_context("cnnctl", [], resilient_parsing=True)
    for name in group.list_commands(root):
        assert f"## cnnctl {name}\n" in page
        for param in group.get_command(root, name).params:
            assert all(opt in page for opt in param.opts if opt.startswith("-")), (name, param.opts)


def test_every_bundled_config_is_named_by_a_page():
    text = "\n".join(p.read_text(encoding="utf-8") for p in PAGES)
    configs = ROOT / "configs"
    names = [p.stem for p in configs.glob("*.yaml")] + [p.name for p in configs.iterdir() if p.is_dir()]
    assert "lenet5-digits" in names and "compare-optimizers" in names
    assert [n for n in sorted(names) if not re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", text)] == []


def test_every_image_a_page_shows_exists():
    shown = [(page, next(filter(None, m.groups()))) for page in [*PAGES, ROOT / "README.md"]
             for m in IMAGE.finditer(page.read_text(encoding="utf-8"))]
    assert any(page.name == "README.md" for page, _ in shown)  # the README shows a picture too
    missing = [f"{page.relative_to(ROOT)}: {src}" for page, src in shown
               if not src.startswith(("http://", "https://")) and not (page.parent / src.split("#")[0]).is_file()]
    assert missing == []


# ---------------------------------------------------------------- the built site

@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site as `mkdocs build --strict` makes it, in a temporary folder (the checkout is left as it was)."""
    for module in ("mkdocs", "material", "mkdocs_jupyter"):
        pytest.importorskip(module, reason="the [docs] extra is not installed: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    before = sorted(p.name for p in ROOT.iterdir())
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(p.name for p in ROOT.iterdir()) == before  # no cache or site folder left in the checkout
    return out


def test_site_builds_strict(site):
    assert (site / "index.html").is_file() and (site / "reference" / "config.html").is_file()
    assert (site / "assets" / "katex" / "katex.min.js").is_file()
    notebook = (site / "notebook.html").read_text(encoding="utf-8")
    assert "data:image/png;base64" in notebook  # stored executed: the plots show


def _math_page() -> Path:
    """docs/learn/convolution.md, the Learn page with the output-size formula (else any page with a formula)."""
    page = DOCS / "learn" / "convolution.md"
    if page.is_file():
        return page
    return next(p for p in PAGES if "$$" in p.read_text(encoding="utf-8"))


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[docs]'")
    return path


@pytest.fixture(scope="module")
def served(site):
    """The built site on 127.0.0.1 (a free port), as `mkdocs serve` would show it; its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the test's output is its assertions, not an access log
        pass


def test_site_opens_in_chromium_with_formulas_rendered(served):
    from playwright.sync_api import sync_playwright

    chromium = _chromium()
    shots = Path(os.environ.get("CNNCTL_SCREENSHOTS", ROOT / "tmp" / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    math = _math_page().relative_to(DOCS).with_suffix(".html").as_posix()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"{r.url}: {r.failure}"))
            for path, shot in (("index.html", "home.png"), (math, "math.png")):
                page.goto(f"{served}/{path}", wait_until="networkidle")
                assert page.title() and page.locator("h1").count() >= 1, path
                if path == math:
                    page.wait_for_selector(".katex", timeout=10_000)
                    assert page.locator(".arithmatex .katex").count() >= 1
                    assert "$$" not in page.inner_text("article") and "\\[" not in page.inner_text("article")
                page.add_style_tag(content="*, *::before { transition: none !important; animation: none !important }")
                page.screenshot(path=str(shots / shot), full_page=True)  # the final look, not a fade half done
            assert errors == []
        finally:
            browser.close()
    assert (shots / "home.png").stat().st_size > 10_000 and (shots / "math.png").stat().st_size > 10_000
