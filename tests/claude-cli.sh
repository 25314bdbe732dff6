#!/usr/bin/env bash
# claude-cli.sh VERSION DIR: installs the Claude Code CLI, npm package
# @anthropic-ai/claude-code@VERSION, into DIR (a cache outside the
# repository; reused when the binary there already reports VERSION), and
# prints the path of its native binary, for `make test-claude`
# (tests/claude_cli.rs).  Messages go to stderr; exit 1 when npm is
# missing or cannot install the package.
#
# The install runs no package script (--ignore-scripts), so the package's
# postinstall, which links the native binary over the placeholder
# bin/claude.exe, does not run: node_modules/.bin/claude is then a stub
# that only prints an error.  The binary itself is the platform package
# npm installed as an optional dependency
# (node_modules/@anthropic-ai/claude-code-linux-x64/claude and the like),
# the very file the postinstall would have linked; that is the one used.
set -euo pipefail

version=${1:?usage: claude-cli.sh VERSION DIR}
dir=${2:?usage: claude-cli.sh VERSION DIR}
package=@anthropic-ai/claude-code

# The native binary in DIR that reports VERSION, if any.
found() {
	local bin
	for bin in "$dir"/node_modules/"$package"-*/claude; do
		[[ -f $bin && -x $bin ]] || continue
		if [[ $("$bin" --version 2>/dev/null) == "$version "* ]]; then
			printf '%s\n' "$bin"
			return 0
		fi
	done
	return 1
}

if bin=$(found); then
	echo "claude-cli: $package@$version already in $dir" >&2
	printf '%s\n' "$bin"
	exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
	echo "claude-cli: npm is not installed: cannot install $package@$version" >&2
	exit 1
fi
echo "claude-cli: npm install $package@$version into $dir" >&2
mkdir -p "$dir"
if ! npm install --prefix "$dir" --no-audit --no-fund --ignore-scripts --save-exact \
	"$package@$version" >&2; then
	echo "claude-cli: npm could not install $package@$version" >&2
	exit 1
fi
if ! bin=$(found); then
	echo "claude-cli: no native binary of $package@$version for this platform in $dir" >&2
	exit 1
fi
printf '%s\n' "$bin"
