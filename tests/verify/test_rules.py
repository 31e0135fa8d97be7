"""The YARA rules compiler shared by the CLI, the verification Job and the operator
(vmguard/verify/rules.py): a rule that does not compile is named by file, line and rule."""

from __future__ import annotations

import pytest
import yara_x

from vmguard.verify.rules import RulesError, compile_sources, rule_at

pytestmark = pytest.mark.unit

GOOD = 'rule fine { strings: $a = "x" condition: $a }'
BROKEN = "\n".join(
    [
        "rule fine2 { condition: true }",
        "",
        "rule broken {",
        '  strings: $a = "x"',
        "  condition: $a and",
        "}",
    ]
)


def test_a_syntax_error_names_the_file_the_line_and_the_rule() -> None:
    with pytest.raises(RulesError) as caught:
        compile_sources([("configmap/rules/good.yar", GOOD), ("configmap/rules/bad.yar", BROKEN)])
    error = caught.value
    assert (error.origin, error.line, error.rule) == ("configmap/rules/bad.yar", 6, "broken")
    assert str(error).startswith(
        "YARA rules do not compile: configmap/rules/bad.yar line 6 (rule broken): "
    ), str(error)
    assert "Traceback" not in str(error)


def test_good_rules_compile_and_match() -> None:
    rules = compile_sources([("a.yar", GOOD)])
    assert [r.identifier for r in yara_x.Scanner(rules).scan(b"..x..").matching_rules] == ["fine"]


def test_the_rule_of_a_line_is_the_nearest_declaration_above_it() -> None:
    text = 'import "pe"\n\nprivate rule a { condition: true }\nglobal rule b {\n condition: a\n}\n'
    assert rule_at(text, 1) is None
    assert rule_at(text, 3) == "a"
    assert rule_at(text, 5) == "b"
