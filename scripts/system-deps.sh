#!/usr/bin/env bash
# Debian packages the build and tests need. Installs what is missing when
# run as root with apt-get; otherwise says what to install and carries on
# (the build falls back to zlib's CRC without ISA-L; `make fuzz` needs clang;
# the DICOM tests validate with dicom3tools' dciodvfy and DCMTK's dsrdump; the PACS test runs its
# own Orthanc on free loopback ports, never the packaged service; the live
# view's browser test and benchmark drive headless chromium, with a font).
set -euo pipefail
need=(zlib1g-dev libisal-dev clang-14 libclang-rt-14-dev dicom3tools dcmtk orthanc chromium fonts-dejavu-core)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  # orthanc's package starts its service where it can (ports 4242/8042); the
  # tests start their own, so stop the one just installed.
  if [[ " ${missing[*]} " == *" orthanc "* ]] && [ -x /etc/init.d/orthanc ]; then
    /etc/init.d/orthanc stop >/dev/null 2>&1 || true
  fi
else
  echo "warning: missing Debian packages (install them as root): ${missing[*]}" >&2
fi
