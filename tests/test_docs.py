"""README.md and docs/*.md: every relative link and image resolves, and every #anchor names a heading of
its target (as GitHub makes heading anchors). Links to web addresses are not followed."""
import glob
import os
import re
import xml.etree.ElementTree as ElementTree

from conftest import REPO

DOCS = [os.path.join(REPO, "README.md")] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+).+?\1", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_TARGET = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)=\"([^\"]*)\"", re.I)
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
WEB = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto: ...


def prose(text):
    """The text outside fenced code blocks and code spans, where links are links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading):
    """GitHub's anchor for a heading: its text lower-cased, punctuation dropped, each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays, its target goes
    text = re.sub(r"<[^>]+>", "", text).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path):
    """The anchors of a Markdown file's headings; repeated ones get -1, -2, ... as on GitHub."""
    with open(path) as f:
        text = FENCE.sub("", f.read())
    seen, found = {}, set()
    for heading in HEADING.findall(text):
        base = slug(heading)
        found.add(base if base not in seen else "%s-%d" % (base, seen[base]))
        seen[base] = seen.get(base, 0) + 1
    return found


def targets(path):
    with open(path) as f:
        text = prose(f.read())
    return LINK.findall(text) + HTML_TARGET.findall(text)


def broken_links(path):
    """[(file, target, why)] for the relative links and images of `path` that do not resolve."""
    broken = []
    for target in targets(path):
        if not target or WEB.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        if not os.path.exists(resolved):
            broken.append((path, target, "no such file"))
        elif anchor and not resolved.endswith(".md"):
            broken.append((path, target, "an anchor into a file that is not Markdown"))
        elif anchor and anchor not in anchors(resolved):
            broken.append((path, target, "no heading with this anchor"))
    return broken


def test_slugs_are_githubs():
    assert slug("Sampling (`--predict`)") == "sampling---predict"
    assert slug("Making TFRecords: `tfrecords_tools`") == "making-tfrecords-tfrecords_tools"
    assert slug("2. Fine-tune a released checkpoint") == "2-fine-tune-a-released-checkpoint"
    assert slug("Sampling's layout") == "samplings-layout"
    assert slug("KEY=VALUE overrides") == "keyvalue-overrides"


def test_repeated_headings_get_numbered_anchors(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Notes\n\n## Notes\n\n```bash\n# not a heading\n```\n\n## Other `x`\n")
    assert anchors(str(page)) == {"notes", "notes-1", "other-x"}


def test_broken_links_are_found(tmp_path):
    (tmp_path / "other.md").write_text("# Here\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#here) [gone](nothere.md) [bad](other.md#there) ![img](pic.svg) "
                    "[self](#title) [web](https://example.com/x.md) `[code](nothere.md)`\n\n# Title\n")
    assert [(target, why) for _, target, why in broken_links(str(page))] == [
        ("nothere.md", "no such file"), ("other.md#there", "no heading with this anchor"),
        ("pic.svg", "no such file")]


def test_every_relative_link_and_image_resolves():
    links = sum(len(targets(path)) for path in DOCS)
    assert len(DOCS) >= 10 and links >= 50, (DOCS, links)
    assert [broken for path in DOCS for broken in broken_links(path)] == []


def test_every_doc_is_linked_from_the_readme():
    readme = os.path.join(REPO, "README.md")
    linked = {os.path.normpath(os.path.join(REPO, target.partition("#")[0])) for target in targets(readme)}
    assert [path for path in DOCS[1:] if path not in linked] == []


def test_images_are_well_formed_svg():
    images = [os.path.normpath(os.path.join(os.path.dirname(path), target)) for path in DOCS
              for target in targets(path) if target.endswith(".svg") and not WEB.match(target)]
    assert images, "the docs show no diagram"
    for image in images:
        root = ElementTree.parse(image).getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg" and root.get("viewBox"), image
