"""The front door tells the truth: README.md is short enough to read in one sitting, every file the
README and docs/ cite exists, and docs/rules.md's table is the one generated from the registry, so a
default changed in fusedoptim/optim/registry.py fails here until `python -m scripts.rule_sheet` rewrites it."""
import inspect
import re
from pathlib import Path

from fusedoptim import optim
from fusedoptim.optim.base import OPTIONS
from fusedoptim.optim.registry import RULES
from scripts import rule_sheet

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"

# Characters, not bytes: what a reader reads. Everything past what this allows goes to one page per topic
# in docs/, linked from the README.
README_LIMIT = 15_000

# Which cited text is a path. Fenced code blocks are code, not citations, and are left out. A markdown
# link's target is a path unless it is a URL or an anchor (resolved from the page's folder, as GitHub
# does). A span in backticks is a path, resolved from the repository root, when
#   - it has no whitespace and none of < > ( ) { } [ ] = , : ; * ' " (so commands like `./dev main`,
#     expressions like `fo.AdamW(...)`, placeholders like `reports/<gpu>/` and URLs are skipped),
#   - it contains a "/", and does not name another project's file (`torch/optim/lr_scheduler.py`),
#   - its first component is a top-level entry of the repository or it ends in a file extension (so a
#     misspelt folder is caught by its extension, and `ld/st.global.v4` is not a path).
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
SPAN = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
NOT_A_PATH = re.compile(r"""[\s<>(){}\[\]=,:;*'"]""")
EXTENSIONS = (".py", ".md", ".png", ".csv", ".json", ".toml", ".txt")
OTHER_PROJECTS = ("torch/",)


def pages() -> list:
    return [README, *sorted(DOCS.glob("*.md"))]


def cited_paths(page: Path) -> list:
    """(the cited text, the file it names) for each path cited on the page, by the rule above."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    # What git ignores (runs/, where the commands write unless given --out) is no file of the repository:
    # a page may name it, and a fresh clone has none of it.
    ignored = {line.strip().strip("/") for line in (ROOT / ".gitignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    top_level = {entry.name for entry in ROOT.iterdir()} - ignored
    cited = []
    for span in SPAN.findall(text):
        if NOT_A_PATH.search(span) or "/" not in span or span.startswith(OTHER_PROJECTS):
            continue
        if span.split("/")[0] in ignored:
            continue
        if span.split("/")[0] in top_level or span.endswith(EXTENSIONS):
            cited.append((span, ROOT / span))
    for target in LINK.findall(text):
        if "://" in target or target.startswith(("#", "mailto:")):
            continue
        cited.append((target, page.parent / target.split("#")[0]))
    return cited


def missing_paths(page_list) -> list:
    missing = []
    for page in page_list:
        for text, path in cited_paths(page):
            resolved = path.resolve()
            if not resolved.is_relative_to(ROOT) or not resolved.exists():
                missing.append(f"{page.relative_to(ROOT)}: {text}")
    return missing


def test_readme_is_at_most_15000_characters():
    length = len(README.read_text(encoding="utf-8"))
    assert length <= README_LIMIT, (f"README.md has {length} characters, over {README_LIMIT}: move a topic to "
                                    "its page in docs/ and link it in one line")


def test_every_cited_path_exists():
    assert DOCS.is_dir() and len(pages()) > 1, "docs/ has no pages"
    assert sum(len(cited_paths(page)) for page in pages()) > 50, "the path rule found almost nothing: is it broken?"
    missing = missing_paths(pages())
    assert not missing, "cited but not in the repository:\n" + "\n".join(missing)


def test_the_rule_sheet_is_current():
    """docs/rules.md's table and the README's list of classes are those scripts/rule_sheet.py generates
    from the registry: a row of the registry changed (a default, a state, a summary, a new row) fails here
    until the command is run, and so does a hand edit of either."""
    for page in rule_sheet.PAGES:
        stale = page.staleness(page.path.read_text(encoding="utf-8"), RULES)
        assert not stale, f"{page.name} is stale: run python -m scripts.rule_sheet\n{stale}"


def test_the_arguments_as_written_are_the_class_signature():
    """The rule sheet writes the arguments and the options as inspect.signature prints each class: same
    names, order and values, the options after the `*`."""
    for name, rule in RULES.items():
        signature = str(inspect.signature(getattr(optim, name)))
        assert rule_sheet.arguments_cell(rule).strip("`") in signature, name
        assert signature.endswith(f"*, {rule_sheet.arguments(OPTIONS)})"), name


def test_each_class_help_explains_every_argument_and_option_from_its_declaration():
    """help(fo.Tiger) says what each argument is: the class's docstring holds, for every parameter of
    its signature, its name, its default and the sentence its declaration gives (Hyperparameter.doc)."""
    for name, rule in RULES.items():
        cls = getattr(optim, name)
        doc = " ".join(cls.__doc__.split())  # as a reader reads it, whatever the wrapping
        specs = {spec.name: spec for spec in rule.arguments}
        for parameter in list(inspect.signature(cls).parameters)[1:]:  # params first, then the rest
            if parameter in specs:
                spec = specs[parameter]
                assert spec.doc.strip(), f"{name}.{parameter}: its declaration has no doc"
                assert f"{parameter}={spec.default!r}: {' '.join(spec.doc.split())}" in doc, \
                    f"help({name}) does not explain {parameter} as declared"
            else:
                assert parameter in OPTIONS, f"{name}.{parameter}: neither a declared argument nor an option"
                assert f"{parameter}={OPTIONS[parameter]!r}".replace("'", '"') in doc, \
                    f"help({name}) does not explain the option {parameter}"
        assert "Base of every optimizer" not in doc
