"""A Sphinx extension: every page of one edition links to the same page of the other.

The English book is built at the site's root and the Japanese one under ``ja/``, page for page
at the same paths (``notebooks/06_stage1_training.html`` and ``ja/notebooks/06_stage1_training.html``).
Each edition's ``_config.yml`` names where the other's root is, seen from its own root
(``edition_counterpart``: ``ja/`` in the English book, ``../`` in the Japanese one) and the
link's text (``edition_counterpart_label``). The link goes at the top of each page's body.
"""

from __future__ import annotations

import html

STYLE = ("text-align:right;font-size:0.9em;margin:0 0 0.5em 0;"
         "padding:0.2em 0.6em;border-bottom:1px solid #ddd")


def counterpart_url(pagename: str, counterpart: str) -> str:
    """The other edition's page, relative to this page (``pagename`` is Sphinx's, no suffix)."""
    up = "../" * pagename.count("/")
    return f"{up}{counterpart}{pagename}.html"


def _add_link(app, pagename, templatename, context, doctree):
    counterpart = app.config.edition_counterpart
    if not counterpart or doctree is None or "body" not in context:
        return
    url = html.escape(counterpart_url(pagename, counterpart), quote=True)
    label = html.escape(app.config.edition_counterpart_label)
    context["body"] = (f'<p class="edition-switch" style="{STYLE}">'
                       f'<a href="{url}" hreflang="{app.config.edition_counterpart_language}">'
                       f"{label}</a></p>\n" + context["body"])


def setup(app):
    app.add_config_value("edition_counterpart", "", "html")
    app.add_config_value("edition_counterpart_label", "", "html")
    app.add_config_value("edition_counterpart_language", "", "html")
    app.connect("html-page-context", _add_link)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
