"""A parity report as JUnit XML, so a release pipeline can gate on it: ``gradcam validate --junit``.

One test suite per report, one test case per output and batch (``cam @ 3x3x64x64``), and one
per batch for the class agreement. A case fails exactly where the report's verdict for that
output is a failure and that batch contributes to it (its worst difference is beyond the
limit, a map of it is beyond the limit and not explained by mask flips, or its classes
disagree), so the XML never passes what the report fails, nor the reverse. A failure's
text is the report's table row for the output.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

__all__ = ["junit_document"]

_MEASURES = {"max_abs": 0, "max_rel": 1}


def junit_document(reports) -> str:
    """JUnit XML for one or more :class:`~gradcam_model.checks.report.ParityReport`."""
    root = ET.Element("testsuites", name="gradcam validate")
    total = failed = 0
    for report in reports:
        suite = _suite(report)
        root.append(suite)
        total += int(suite.get("tests"))
        failed += int(suite.get("failures"))
    root.set("tests", str(total))
    root.set("failures", str(failed))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _suite(report) -> ET.Element:
    runtime = report.runtime or {}
    name = f"{report.artifact} [{runtime.get('name', report.format)}:{runtime.get('device', '?')}]"
    suite = ET.Element("testsuite", name=name)
    props = ET.SubElement(suite, "properties")
    for key, value in (
        ("format", report.format),
        ("runtime", runtime.get("name", "")),
        ("runtime_version", runtime.get("version", "")),
        ("device", runtime.get("device", "")),
        *((f"setting.{k}", v) for k, v in runtime.get("settings", {}).items()),
    ):
        ET.SubElement(props, "property", name=key, value=str(value))
    rows = dict(zip(report.outputs, report.table().splitlines()[1:], strict=False))
    unexplained = {m.batch for m in report.maps if not m.explained}
    cases = failures = 0
    for index, batch in enumerate(report.per_batch):
        shape = "x".join(map(str, batch["shape"]))
        for name, diff in report.outputs.items():
            case = ET.SubElement(suite, "testcase", classname=name, name=f"{name} @ {shape}")
            cases += 1
            worst = batch["worst"].get(name)
            if diff.ok:
                continue
            if math.isnan(diff.max_abs) or worst is None:
                reason = "not compared"
            elif name == "cam":
                reason = "maps beyond the limit, not explained" if index in unexplained else None
            else:
                value = worst[_MEASURES[diff.measure]]
                reason = f"{diff.measure} {value:.3g} > limit {diff.limit:.3g}" if value > diff.limit else None
            if reason:
                failures += 1
                ET.SubElement(case, "failure", message=f"{name}: {reason}").text = rows.get(name, "").strip()
        case = ET.SubElement(suite, "testcase", classname="class_index", name=f"class agreement @ {shape}")
        cases += 1
        if report.class_agreement < report.tolerance.min_class_agreement and batch["agree"] < batch["stable"]:
            failures += 1
            message = f"class_index: {batch['agree']} of {batch['stable']} agree"
            ET.SubElement(
                case, "failure", message=message
            ).text = f"class agreement {report.class_agreement:.3f} < {report.tolerance.min_class_agreement:.3f}"
    suite.set("tests", str(cases))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    return suite
