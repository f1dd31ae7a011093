"""The front door tells the truth: README.md is short enough to read in one sitting, every file the
README and docs/ cite exists, and docs/rules.md's table is the registry's (every class, argument,
default, state and bytes per param), so a default changed in fusedoptim/optim/registry.py fails here until the
rule sheet says so too."""
import ast
import inspect
import re
from pathlib import Path

from fusedoptim import optim
from fusedoptim.optim.base import OPTIONS
from fusedoptim.optim.registry import RULES

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
RULE_SHEET = DOCS / "rules.md"

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


# docs/rules.md: the table "The registry, row by row", one row per rule, and the line of the options every
# class takes. A value is written as Python prints it (repr: 1e-3 is `0.001`, 1e-8 is `1e-08`), the way
# inspect.signature shows the class.
def arguments(defaults: dict) -> str:
    return ", ".join(f"{name}={default!r}" for name, default in defaults.items())


def rule_table(text: str) -> dict:
    """{class name: {column: cell}} for the rows of the table whose first column is `fo.<Name>`."""
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| class |"))
    columns = [cell.strip() for cell in header.strip()[1:-1].split("|")]
    rows = {}
    for line in lines:
        match = re.match(r"\| `fo\.(\w+)` \|", line)
        if match:
            cells = [cell.strip() for cell in line.strip()[1:-1].split("|")]
            assert len(cells) == len(columns), f"row {match[1]}: {len(cells)} cells for {len(columns)} columns"
            assert match[1] not in rows, f"two rows for fo.{match[1]}"
            rows[match[1]] = dict(zip(columns, cells))
    return rows


def options_bytes(cell: str) -> list:
    """[(bytes, {name: value})] for each "N with `name=value, ...`" of a "with other options" cell."""
    pairs = []
    for number, text in re.findall(r"(\d+) with `([^`]+)`", cell):
        call = ast.parse(f"options({text})", mode="eval").body
        pairs.append((int(number), {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords}))
    return pairs


def rule_sheet_problems(text: str, rules: dict) -> list:
    """What docs/rules.md's table says differently from the registry ``rules``."""
    rows = rule_table(text)
    problems = [f"fo.{name}: no row" for name in rules if name not in rows]
    problems += [f"fo.{name}: a row, but no such rule in the registry" for name in rows if name not in rules]
    for name, rule in rules.items():
        if name not in rows:
            continue
        row = rows[name]
        expected = f"`{arguments(rule.defaults)}`"
        if row["arguments (defaults)"] != expected:
            problems.append(f"fo.{name}: arguments {row['arguments (defaults)']}, the registry's are {expected}")
        states = {state.name for state in rule.states} | set(rule.scalar_states)
        named = set(re.findall(r"`(\w+)`", row["states"]))
        if named != states or (not states and row["states"] != "none"):
            problems.append(f"fo.{name}: states {row['states']}, the registry's are {sorted(states) or 'none'}")
        written = re.match(r"\d+", row["bytes/param"])
        fp32 = rule.bytes_per_param(rule.defaults)
        if written is None or int(written[0]) != fp32:
            problems.append(f"fo.{name}: bytes/param {row['bytes/param']}, the registry's is {fp32} (fp32)")
        for number, overrides in options_bytes(row["with other options"]):
            unknown = set(overrides) - set(rule.defaults)
            computed = rule.bytes_per_param({**rule.defaults, **overrides})
            if unknown or number != computed:
                problems.append(f"fo.{name}: {number} bytes/param with {overrides}, the registry's is "
                                f"{computed}" + (f" (no hyperparameter {sorted(unknown)})" if unknown else ""))
    if f"`{arguments(OPTIONS)}`" not in text:
        problems.append(f"the options every class takes are `{arguments(OPTIONS)}`")
    return problems


def test_rule_sheet_is_the_registry():
    problems = rule_sheet_problems(RULE_SHEET.read_text(encoding="utf-8"), RULES)
    assert not problems, "docs/rules.md disagrees with fusedoptim/optim/registry.py:\n" + "\n".join(problems)


def test_the_arguments_as_written_are_the_class_signature():
    """The rule sheet writes the arguments as inspect.signature prints each class: same names, order, values."""
    for name, rule in RULES.items():
        assert arguments(rule.defaults) in str(inspect.signature(getattr(optim, name))), name


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
