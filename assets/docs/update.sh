#!/bin/sh
# Vendors Redoc's standalone bundle from the `redoc` npm package into this
# directory, patched so the page loads nothing from outside the service.
#
#   assets/docs/update.sh 2.5.4
#
# Needs npm and node. Afterwards: update the version in README.md here, run
# `cargo test --test docs` (its URL scan fails on any new external URL in the
# bundle: look at each one, then patch it out here or allow-list it there).
set -eu

version=${1:?usage: assets/docs/update.sh VERSION}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent "redoc@$version" >/dev/null && tar -xzf "redoc-$version.tgz")
package=$work/package

node - "$package/bundles/redoc.standalone.js" "$here/redoc.standalone.js" <<'JS'
const fs = require("fs");
const [from, to] = process.argv.slice(2);
let js = fs.readFileSync(from, "utf8");

// Replaces exactly one occurrence, or stops: a new release needs a look.
function replaceOnce(needle, replacement, why) {
  const count = js.split(needle).length - 1;
  if (count !== 1) {
    console.error(`expected ${needle} once (${why}), found it ${count} times`);
    process.exit(1);
  }
  js = js.replace(needle, () => replacement);
}

// The "API docs by Redocly" footer shows Redocly's logo from their CDN. An
// empty src fires the image's error handler without a request, and the
// component then renders nothing (the link text stays).
replaceOnce('src:"https://cdn.redoc.ly/redoc/logo-mini.svg"', 'src:""',
  "the footer logo");
// The source map is not vendored; without this line, browser devtools ask
// for it and get a 404.
replaceOnce("\n//# sourceMappingURL=redoc.standalone.js.map", "",
  "the source map comment");

fs.writeFileSync(to, js);
JS

cp "$package/LICENSE" "$here/LICENSE"
cp "$package/bundles/redoc.standalone.js.LICENSE.txt" "$here/redoc.standalone.js.LICENSE.txt"
echo "vendored redoc $version: $(wc -c <"$here/redoc.standalone.js") bytes"
