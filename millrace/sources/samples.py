"""A small sample corpus in several formats, written from scratch so the demo needs no downloads."""

from __future__ import annotations

import zipfile
from email.message import EmailMessage
from pathlib import Path
from xml.sax.saxutils import escape

HANDBOOK = [
    ["Riverbend Hydro Employee Handbook", "", "Welcome to Riverbend Hydro. This handbook explains how we work,",
     "what we expect from each other, and where to find help.", "", "Our plants generate clean electricity from",
     "the Ashford and Millbrook rivers for about 40,000 homes."],
    ["Paid leave", "", "New employees receive 27 days of paid annual leave per year, rising to",
     "30 days after five years of service. Leave is booked in the HR portal", "at least two weeks in advance.",
     "", "Parental leave is 20 weeks at full pay for every parent."],
    ["Safety at the plant", "", "Hard hats and ear protection are required beyond the yellow line.",
     "Never enter the turbine hall alone during a startup sequence.", "Report every near miss to the duty engineer."],
]

RUNBOOK = ("Turbine operations runbook", [
    "This runbook covers alarms on the Kaplan turbines at the Millbrook plant.",
    "Vibration alarm: if the bearing vibration alarm goes off, reduce the load to 40 percent, "
    "check the guide bearing oil temperature, and call the duty engineer on extension 4411. "
    "If vibration stays above 7 mm/s for ten minutes, perform a controlled shutdown.",
    "Low reservoir alarm: close the intake gates to the second position and inform the river authority.",
])

FAQ_HTML = """<!DOCTYPE html><html><head><title>Turbine controller FAQ</title></head><body>
<h1>Turbine controller FAQ</h1>
<h2>Which port does the controller listen on?</h2>
<p>The TC-9 turbine controller serves its Modbus TCP interface on port 5020 and its web console on port 8443.</p>
<h2>How do I reset the controller?</h2>
<p>Hold the reset button for five seconds; the status LED blinks amber while the controller restarts.</p>
</body></html>"""

NOTES_MD = """# Release notes: plant monitoring 2.4

* The dashboard now shows fish-pass flow in litres per second.
* Alert e-mails include the plant name in the subject line.
* Fixed: the reservoir level chart skipped readings after midnight.
"""

MEETING_RTF = r"""{\rtf1\ansi\deff0{\fonttbl{\f0 Times New Roman;}}
{\b Maintenance planning meeting, 3 March}\par
The spring inspection of turbine 2 is scheduled for the week of 14 April.\par
The replacement runner blades arrive from the foundry in Bergen in late March.\par
}"""

POLICY = ("Travel policy", [
    "Employees travelling to the Ashford plant may claim mileage at 0.45 euro per kilometre.",
    "Train travel is preferred for trips under 500 kilometres. Hotel bookings go through the travel desk.",
])


def _pdf_text(s: str) -> str:
    return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def pdf_bytes(pages: list[list[str]], title: str) -> bytes:
    """A born-digital PDF with one text page per entry (Helvetica, no external resources)."""
    objs: list[bytes] = []
    n = len(pages)
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(n))
    objs.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objs.append(f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode())
    objs.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for i, lines in enumerate(pages):
        ops = ["BT", "/F1 12 Tf", "16 TL", "72 740 Td"] + [f"({_pdf_text(line)}) Tj T*" for line in lines] + ["ET"]
        stream = "\n".join(ops).encode("latin-1")
        objs.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {5 + 2 * i} 0 R "
                    "/Resources << /Font << /F1 3 0 R >> >> >>".encode())
        objs.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objs.append(f"<< /Title ({_pdf_text(title)}) >>".encode())
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for num, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % num + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, len(objs), xref)
    return bytes(out)


def docx_bytes(path: Path, title: str, paragraphs: list[str]) -> None:
    body = "".join(f"<w:p><w:r><w:t xml:space=\"preserve\">{escape(p)}</w:t></w:r></w:p>" for p in [title, *paragraphs])
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", '<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.'
                   'openxmlformats.org/package/2006/content-types"><Default Extension="rels" ContentType="application/'
                   'vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType="application/'
                   'xml"/><Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-'
                   'officedocument.wordprocessingml.document.main+xml"/><Override PartName="/docProps/core.xml" '
                   'ContentType="application/vnd.openxmlformats-package.core-properties+xml"/></Types>')
        z.writestr("_rels/.rels", '<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.'
                   'openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.'
                   'openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="word/document.xml"/>'
                   '<Relationship Id="rId2" Type="http://schemas.openxmlformats.org/package/2006/relationships/'
                   'metadata/core-properties" Target="docProps/core.xml"/></Relationships>')
        z.writestr("word/document.xml", '<?xml version="1.0" encoding="UTF-8"?><w:document xmlns:w="http://schemas.'
                   f'openxmlformats.org/wordprocessingml/2006/main"><w:body>{body}</w:body></w:document>')
        z.writestr("docProps/core.xml", '<?xml version="1.0" encoding="UTF-8"?><cp:coreProperties xmlns:cp="http://'
                   'schemas.openxmlformats.org/package/2006/metadata/core-properties" xmlns:dc="http://purl.org/dc/'
                   f'elements/1.1/"><dc:title>{escape(title)}</dc:title></cp:coreProperties>')


def odt_bytes(path: Path, title: str, paragraphs: list[str]) -> None:
    ns = ('xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
          'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0"')
    body = "".join(f"<text:p>{escape(p)}</text:p>" for p in [title, *paragraphs])
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(zipfile.ZipInfo("mimetype"), "application/vnd.oasis.opendocument.text")  # stored, first
        z.writestr("META-INF/manifest.xml", '<?xml version="1.0" encoding="UTF-8"?><manifest:manifest xmlns:'
                   'manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0"><manifest:file-entry '
                   'manifest:full-path="/" manifest:media-type="application/vnd.oasis.opendocument.text"/>'
                   '<manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml"/>'
                   '</manifest:manifest>')
        z.writestr("content.xml", f'<?xml version="1.0" encoding="UTF-8"?><office:document-content {ns}>'
                   f"<office:body><office:text>{body}</office:text></office:body></office:document-content>")


def write_samples(dest: Path) -> list[Path]:
    """Write the sample corpus into `dest` (idempotent: same bytes every time)."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "employee-handbook.pdf").write_bytes(pdf_bytes(HANDBOOK, "Riverbend Hydro Employee Handbook"))
    docx_bytes(dest / "turbine-runbook.docx", RUNBOOK[0], RUNBOOK[1])
    odt_bytes(dest / "travel-policy.odt", POLICY[0], POLICY[1])
    (dest / "controller-faq.html").write_text(FAQ_HTML, encoding="utf-8")
    (dest / "release-notes.md").write_text(NOTES_MD, encoding="utf-8")
    (dest / "maintenance-meeting.rtf").write_text(MEETING_RTF, encoding="ascii")
    mail = EmailMessage()
    mail["Subject"], mail["From"], mail["To"] = "Fish pass survey results", "ecology@riverbend.example", "all@riverbend.example"
    mail.set_content("The autumn survey counted 1,284 salmon using the Millbrook fish pass, up 12 percent on last year.")
    (dest / "fish-pass-survey.eml").write_bytes(bytes(mail))
    # Two bad inputs, to show that they are reported with a reason and the rest still lands.
    (dest / "truncated-invoice.pdf").write_bytes(pdf_bytes([["x"]], "broken")[:120])
    (dest / "empty-notes.txt").write_bytes(b"")
    return sorted(dest.iterdir())


RECORD_WORDS = ("river weir sluice tide gauge keeper station mill lock quay salmon ladder flood bank reed heron "
                "turbine valve survey culvert meadow barge towpath dredger silt channel").split()


def write_records(path: Path, n: int, words: int = 12) -> Path:
    """A JSONL record corpus of `n` short synthetic records (deterministic for a given n), for scale tests."""
    import json
    import random

    rng = random.Random(n)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            text = " ".join(rng.choice(RECORD_WORDS) for _ in range(words))
            fh.write(json.dumps({"_id": f"r{i}", "title": f"Record {i}", "text": text}) + "\n")
    return path
