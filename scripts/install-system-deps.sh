#!/usr/bin/env bash
# System packages the tests need: espeak-ng and sox make real test speech, libsndfile1 reads it,
# Chromium and its driver run the web page's browser tests, nginx fronts the replicas of the
# topology tests (tests/topology).
set -euo pipefail

packages=(espeak-ng sox libsndfile1 chromium chromium-driver nginx-light)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing system packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
