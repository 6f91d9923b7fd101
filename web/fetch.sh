#!/bin/sh
# Fetches the page's npm packages (three.js; playwright-core for the browser test) into the build
# directory at build time, pinned by web/package-lock.json. Never fails the build: without network
# or npm the page is served without its 3D viewer.
dir="$1"
cd "$dir" || exit 0
if command -v npm >/dev/null 2>&1 && npm ci --no-audit --no-fund > npm.log 2>&1; then
  echo "web: npm packages installed in $dir/node_modules"
else
  echo "web: npm ci failed (see $dir/npm.log): the page will have no 3D viewer"
fi
touch npm.stamp
