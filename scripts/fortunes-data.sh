#!/usr/bin/env bash
# Text for the embedded default model: the English fortunes that Debian's `fortunes` package ships (public-domain
# and freely redistributable quotations, BSD fortune(6)). Installs the package when missing (needs root), then
# writes OUT/train.txt and OUT/heldout.txt: every 20th fortune goes to the held-out split, the rest to training.
# Each fortune ends with a blank line. Deterministic: the same package gives the same files.
# Usage: bash scripts/fortunes-data.sh [OUT=data/fortunes]
set -euo pipefail
out=${1:-data/fortunes}
src=/usr/share/games/fortunes
if [ ! -f "$src/fortunes" ]; then
  if [ "$(id -u)" != 0 ]; then echo "fortunes-data: install Debian's 'fortunes' package first (apt-get install fortunes)" >&2; exit 1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fortunes >/dev/null
fi
mkdir -p "$out"
# the plain-text files only (not the .dat indexes, not the .u8 symlinks, not the offensive subfolder)
files=$(cd "$src" && find . -maxdepth 1 -type f ! -name '*.dat' ! -name '*.u8' | sort)
tmp_train=$(mktemp "$out/train.XXXX") tmp_held=$(mktemp "$out/heldout.XXXX")
(cd "$src" && cat $files) | awk -v train="$tmp_train" -v held="$tmp_held" '
  /^%$/ { if (buf != "") { f = (n % 20 == 19) ? held : train; printf "%s\n", buf > f; n++ } buf = ""; next }
  { buf = buf $0 "\n" }
  END { if (buf != "") { f = (n % 20 == 19) ? held : train; printf "%s\n", buf > f } }'
mv "$tmp_train" "$out/train.txt"
mv "$tmp_held" "$out/heldout.txt"
echo "fortunes-data: $(wc -c < "$out/train.txt") bytes of training text, $(wc -c < "$out/heldout.txt") held out, in $out"
