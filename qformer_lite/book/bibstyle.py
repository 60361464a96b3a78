"""A Sphinx extension: the bibliography labels its entries as the text cites them.

The chapters cite author and year (``bibtex_reference_style: author_year``: "Li et al., 2023"),
but sphinxcontrib-bibtex's default list labels entries alpha-style ("[LLSH23]"), so a reader
cannot find a citation in the list by its name. This registers a pybtex style, ``authoryear``
(``bibtex_default_style`` in ``_config.yml``), whose labels are the citations' own: the first
author's surname, "and" the second's or "et al.", and the year, sorted by author and year.
"""

from __future__ import annotations

from collections import Counter
from string import ascii_lowercase


def _label(entry) -> str:
    persons = entry.persons.get("author") or entry.persons.get("editor") or []
    names = [" ".join(p.last_names) for p in persons if " ".join(p.last_names) != "others"]
    etal = len(persons) > 2 or len(names) < len(persons)
    who = (entry.key if not names else f"{names[0]} et al." if etal or len(names) > 2
           else " and ".join(names))
    return f"{who}, {entry.fields.get('year', 'n.d.')}"


def setup(app):
    from pybtex.plugin import register_plugin
    from pybtex.style.formatting.unsrt import Style
    from pybtex.style.labels import BaseLabelStyle

    class AuthorYearLabels(BaseLabelStyle):
        def format_labels(self, sorted_entries):
            labels = [_label(e) for e in sorted_entries]
            repeated, seen = Counter(labels), Counter()
            for label in labels:  # two "Li et al., 2023": 2023a and 2023b
                if repeated[label] > 1:
                    seen[label] += 1
                    label += ascii_lowercase[seen[label] - 1]
                yield label

    class AuthorYearStyle(Style):
        default_label_style = "authoryear"
        default_sorting_style = "author_year_title"

    register_plugin("pybtex.style.labels", "authoryear", AuthorYearLabels)
    register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
