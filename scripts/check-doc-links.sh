#!/usr/bin/env bash
# Checks that every documentation reference in the repository resolves to a file in it:
#
#  * relative markdown links (a "]" followed by "(target)", and "[ref]: target" lines) in
#    markdown files, outside fenced code blocks and inline code, and in comment lines of
#    other files. A "#anchor" into a markdown file must name one of its headings (GitHub's
#    slugs) or an explicit id/name anchor;
#  * every path ending in ".md" that a text file mentions (comments, docs, strings), as
#    docs/design.md in a Rust comment: it must exist relative to the mentioning file or to
#    the repository root.
#
# Skipped: URLs (scheme:...), absolute paths (/usr/share/doc/... is where packages install),
# paths after a shell variable, and target/, .cache/, fuzz/corpus/, Cargo.lock.
# A reference must stay inside the repository: one that leaves it (../...) fails.
#
# Usage: scripts/check-doc-links.sh    (exit 0: all resolve; 1: each broken one is listed)
set -Eeuo pipefail # -E: the ERR trap also fires inside functions

step="start"
trap 'echo "check-doc-links: FAILED in step \"$step\" (line $LINENO: $BASH_COMMAND)" >&2' ERR

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$root"
export LC_ALL=C

step="listing the repository's files"
if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	# Tracked plus new (untracked, not ignored) files, so a page not committed yet counts.
	mapfile -t candidates < <(git ls-files --cached --others --exclude-standard | sort -u)
else
	mapfile -t candidates < <(find . -type f -not -path './.git/*' | sed 's|^\./||' | sort)
fi
files=()
for f in "${candidates[@]}"; do
	case $f in
		target/* | */target/* | .cache/* | fuzz/corpus/* | Cargo.lock | */Cargo.lock) continue ;;
	esac
	[[ -f $f ]] || continue # tracked but deleted in the work tree
	grep -Iq . "$f" 2>/dev/null || continue # binary or empty
	files+=("$f")
done
((${#files[@]})) || { echo "check-doc-links: no files found under $root" >&2; exit 1; }

# Prints one "LINE<TAB>TARGET" per markdown link of a file. For *.md: outside fenced code
# blocks, inline code removed. For other files: only in comment lines.
markdown_links() { # FILE
	awk -v md="$([[ $1 == *.md ]] && echo 1 || echo 0)" '
		/^[[:space:]]*(```|~~~)/ { if (md) { fence = !fence; next } }
		fence { next }
		md && /^[[:space:]]*$/ { incode = 0 }
		{
			line = $0
			if (md) {
				# Inline code may span lines within a paragraph: carry the open backtick.
				if (incode) line = "`" line
				incode = gsub(/`/, "`", line) % 2
				gsub(/`[^`]*`/, "", line)
				if (incode) sub(/`.*$/, "", line)
			} else if (line !~ /^[[:space:]]*(\/\/|#|\*|\/\*|--|;)/ && line !~ /[[:space:]](\/\/|#)[[:space:]]/) next
			rest = line
			while (match(rest, /\]\([^)]*\)/)) {
				target = substr(rest, RSTART + 2, RLENGTH - 3)
				sub(/^[[:space:]]+/, "", target)
				sub(/[[:space:]].*$/, "", target) # drop a "title"
				gsub(/^<|>$/, "", target)
				if (target != "") print NR "\t" target
				rest = substr(rest, RSTART + RLENGTH)
			}
			if (md && match(line, /^ *\[[^]]+\]:[[:space:]]+[^[:space:]]+/)) {
				target = line
				sub(/^ *\[[^]]+\]:[[:space:]]+/, "", target)
				sub(/[[:space:]].*$/, "", target)
				gsub(/^<|>$/, "", target)
				print NR "\t" target
			}
		}' "$1"
}

# The anchors a markdown file offers: GitHub heading slugs (lower case, punctuation
# dropped, spaces to hyphens, -1/-2 for repeats) and explicit id="..."/name="..." anchors.
anchors_of() { # MARKDOWN_FILE
	awk '
		/^[[:space:]]*(```|~~~)/ { fence = !fence; next }
		fence { next }
		/^#+[[:space:]]/ {
			h = $0
			sub(/^#+[[:space:]]+/, "", h); sub(/[[:space:]]+#+[[:space:]]*$/, "", h)
			h = tolower(h)
			gsub(/[^a-z0-9 _-]/, "", h)
			gsub(/ /, "-", h)
			slug = h
			if (h in seen) slug = h "-" seen[h]
			seen[h]++
			print slug
		}
		{
			rest = $0
			while (match(rest, /(id|name)="[^"]+"/)) {
				a = substr(rest, RSTART, RLENGTH); sub(/^[a-z]+="/, "", a); sub(/"$/, "", a)
				print a
				rest = substr(rest, RSTART + RLENGTH)
			}
		}' "$1"
}

# Prints one "LINE<TAB>PATH" per markdown file path a file mentions.
md_mentions() { # FILE
	grep -onP '(?<![\w./:$}{-])[\w./-]*\w\.md\b' "$1" | sed 's/:/\t/' || true
}

broken=0
report() { # FILE LINE REFERENCE WHY
	echo "$1:$2: '$3' $4" >&2
	broken=$((broken + 1))
}

# The file a reference names, relative to the mentioning file or (fallback) the root; empty
# if it names none inside the repository.
resolve() { # FROM_FILE PATH ROOT_FALLBACK(0|1)
	local cand
	local cands=("$(dirname "$1")/$2")
	[[ $3 == 1 ]] && cands+=("$2")
	for cand in "${cands[@]}"; do
		cand=$(realpath -m -- "$root/$cand")
		[[ $cand == "$root"/* ]] || continue # outside the repository
		if [[ -e $cand ]]; then
			echo "${cand#"$root"/}"
			return 0
		fi
	done
	return 0
}

declare -A anchor_cache=()
has_anchor() { # MARKDOWN_FILE ANCHOR
	if [[ -z ${anchor_cache[$1]+x} ]]; then
		anchor_cache[$1]=$'\n'"$(anchors_of "$1")"$'\n'
	fi
	[[ ${anchor_cache[$1]} == *$'\n'"$2"$'\n'* ]]
}

step="checking markdown links"
links=0
for f in "${files[@]}"; do
	while IFS=$'\t' read -r line target; do
		[[ -n $target ]] || continue
		links=$((links + 1))
		case $target in
			[a-zA-Z]*:*) [[ $target =~ ^[a-zA-Z][a-zA-Z0-9+.-]*: ]] && continue ;;
		esac
		path=${target%%#*}
		anchor=""
		[[ $target == *#* ]] && anchor=${target#*#}
		path=${path%%\?*}
		if [[ -z $path ]]; then
			resolved=$f
		elif [[ $path == /* ]]; then
			resolved=$(resolve . "${path#/}" 1)
		else
			resolved=$(resolve "$f" "$path" 0)
		fi
		if [[ -z $resolved ]]; then
			report "$f" "$line" "$target" "links to a file that does not exist in the repository"
		elif [[ -n $anchor && $resolved == *.md && -f $resolved ]] && ! has_anchor "$resolved" "$anchor"; then
			report "$f" "$line" "$target" "names an anchor that $resolved does not have"
		fi
	done < <(markdown_links "$f")
done

step="checking *.md mentions"
mentions=0
for f in "${files[@]}"; do
	while IFS=$'\t' read -r line path; do
		[[ -n $path ]] || continue
		[[ $path == /* ]] && continue # an installed path, not one in the repository
		mentions=$((mentions + 1))
		[[ -n $(resolve "$f" "$path" 1) ]] ||
			report "$f" "$line" "$path" "names a markdown file that does not exist in the repository"
	done < <(md_mentions "$f")
done

step="summary"
if ((broken)); then
	echo "check-doc-links: $broken broken reference(s) (of $links links and $mentions *.md mentions in ${#files[@]} files)" >&2
	exit 1
fi
echo "check-doc-links: $links links and $mentions *.md mentions in ${#files[@]} files, all resolve"
