"""Email content from Jinja2 templates: HTML autoescaped, plain text beside it."""

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

_env = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
    auto_reload=False,  # templates ship with the code; checking their mtime on every render costs
)


def render(template: str, **context: object) -> tuple[str, str]:
    """The (text, html) bodies of `template`."""
    text = _env.get_template(f"{template}.txt").render(**context)
    html = _env.get_template(f"{template}.html").render(**context)
    return text, html
