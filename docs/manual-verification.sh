#!/usr/bin/env bash
# Check and unpack an airbundle by hand, without airbundle: the steps of
# docs/manual-verification.md as one script.
#
#   docs/manual-verification.sh BUNDLE PUBKEY [DIR]
#
# BUNDLE  the .airbundle file, or a volume set: its NAME.volumes index or the
#         folder holding it (the index's signatures and every volume's sha256
#         are checked first, then the volumes are read as one stream)
# PUBKEY  the signer's OpenSSH public key file (ssh-ed25519 lines, as in KEY.pub)
# DIR     where to unpack; must not exist yet. Without it a temporary folder
#         is used and removed at the end.
#
# Needs: bash, coreutils, zstd, tar, ssh-keygen, python3 (or jq), and skopeo
# if the bundle carries images, git if it carries repos. Set JSON_TOOL=jq to
# use jq even when python3 is present.
#
# Exits 0 only if: the archive holds only regular files with expected names,
# the manifest comes first, no name repeats, a signature by PUBKEY over the
# manifest verifies (namespace "airbundle"), the archive's members are exactly
# the manifest's, each has the listed sha256, each blob is named by its digest,
# skopeo copies every image with its digest unchanged, and every git bundle
# clones (with fsck) to exactly the refs the manifest lists. An incremental
# bundle (the manifest has a "base") leaves out blobs and commits the far side
# already holds: its images and repos are not complete on their own, so steps
# 5 and 6 list what it carries (git bundle list-heads) instead of copying and
# cloning it.
set -euo pipefail

die() { echo "FAIL: $*" >&2; exit 1; }
say() { echo "== $*"; }

if [ $# -lt 2 ] || [ $# -gt 3 ]; then echo "usage: $0 BUNDLE PUBKEY [DIR]" >&2; exit 2; fi
BUNDLE=$(realpath -- "$1")
PUBKEY=$(realpath -- "$2")
[ -e "$BUNDLE" ] || die "no bundle file or volume set $1"
[ -f "$PUBKEY" ] || die "no public key file $2"
INDEX=""
if [ -d "$BUNDLE" ]; then
  shopt -s nullglob; found=("$BUNDLE"/*.volumes); shopt -u nullglob
  [ "${#found[@]}" = 1 ] || die "$1 is a folder but does not hold exactly one NAME.volumes index"
  INDEX=${found[0]}
elif [ "${BUNDLE%.volumes}" != "$BUNDLE" ]; then
  INDEX=$BUNDLE
fi

need() { command -v "$1" >/dev/null 2>&1 || die "$1 is not installed"; }
for tool in zstd tar ssh-keygen sha256sum sort uniq diff awk cut grep find; do need "$tool"; done

JSON_TOOL=${JSON_TOOL:-}
if [ -z "$JSON_TOOL" ]; then
  if command -v python3 >/dev/null 2>&1; then JSON_TOOL=python3
  elif command -v jq >/dev/null 2>&1; then JSON_TOOL=jq
  else die "python3 or jq is needed to read the manifest"; fi
fi
case "$JSON_TOOL" in python3|jq) need "$JSON_TOOL" ;; *) die "JSON_TOOL must be python3 or jq" ;; esac

if [ $# -eq 3 ]; then
  [ -e "$3" ] && die "$3 exists already; give a new folder"
  mkdir -p -- "$3"
  WORK=$(realpath -- "$3")
else
  WORK=$(mktemp -d)
  trap 'rm -rf -- "$WORK"' EXIT
fi
case "$WORK" in *:*) die "the work folder path must not contain ':' (skopeo's oci: syntax)";; esac
cd "$WORK"

MANIFEST=unpacked/airbundle/manifest.json

# --- reading the (already authenticated) manifest: python3 or jq ------------
manifest_sums() {   # "HEX  PATH" per member, the format sha256sum -c reads
  if [ "$JSON_TOOL" = python3 ]; then
    python3 -c 'import json, sys
m = json.load(open(sys.argv[1]))
print("\n".join(e["digest"].split(":", 1)[1] + "  " + e["path"] for e in m["members"]))' "$MANIFEST"
  else
    jq -r '.members[] | "\(.digest | ltrimstr("sha256:"))  \(.path)"' "$MANIFEST"
  fi
}
manifest_field() {  # formatVersion, apiVersion, ...
  if [ "$JSON_TOOL" = python3 ]; then
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$MANIFEST" "$1"
  else
    jq -r --arg k "$1" '.[$k]' "$MANIFEST"
  fi
}
manifest_expires() {
  if [ "$JSON_TOOL" = python3 ]; then
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["bundle"].get("expires") or "")' "$MANIFEST"
  else
    jq -r '.bundle.expires // ""' "$MANIFEST"
  fi
}
manifest_images() { # "DIGEST REF" per image
  if [ "$JSON_TOOL" = python3 ]; then
    python3 -c 'import json, sys
for i in json.load(open(sys.argv[1]))["images"]: print(i["digest"], i["ref"])' "$MANIFEST"
  else
    jq -r '.images[] | "\(.digest) \(.ref)"' "$MANIFEST"
  fi
}
manifest_is_incremental() {
  if [ "$JSON_TOOL" = python3 ]; then
    python3 -c 'import json, sys; print("yes" if json.load(open(sys.argv[1])).get("base") else "no")' "$MANIFEST"
  else
    jq -r 'if .base then "yes" else "no" end' "$MANIFEST"
  fi
}
manifest_repos() {  # "NAME HEAD-or-empty" per repo
  if [ "$JSON_TOOL" = python3 ]; then
    python3 -c 'import json, sys
for r in json.load(open(sys.argv[1]))["repos"]: print(r["name"], r.get("head") or "")' "$MANIFEST"
  else
    jq -r '.repos[] | "\(.name) \(.head // "")"' "$MANIFEST"
  fi
}
manifest_refs() {   # "OID REFNAME" of one repo
  if [ "$JSON_TOOL" = python3 ]; then
    python3 -c 'import json, sys
for r in json.load(open(sys.argv[1]))["repos"]:
    if r["name"] == sys.argv[2]:
        for ref in r["refs"]: print(ref["target"], ref["name"])' "$MANIFEST" "$1"
  else
    jq -r --arg n "$1" '.repos[] | select(.name == $n) | .refs[] | "\(.target) \(.name)"' "$MANIFEST"
  fi
}

index_volumes() {   # "NAME SIZE COVEREDFROM HEX" per volume of the index
  if [ "$JSON_TOOL" = python3 ]; then
    python3 -c 'import json, sys
for v in json.load(open(sys.argv[1]))["volumes"]:
    print(v["name"], v["size"], v["coveredFrom"], v["digest"].split(":", 1)[1])' "$INDEX"
  else
    jq -r '.volumes[] | "\(.name) \(.size) \(.coveredFrom) \(.digest | ltrimstr("sha256:"))"' "$INDEX"
  fi
}
trusted_signers() { awk '/^ssh-ed25519 / {print "airbundle", $1, $2}' "$PUBKEY"; }
bundle_bytes() {    # the bundle as one byte stream: the file, or the volumes in order
  if [ -z "$INDEX" ]; then cat -- "$BUNDLE"; else
    while read -r vname _ _ _; do cat -- "$VOLDIR/$vname"; done < volumes.txt
  fi
}

# --- 0. a volume set: its signed index, then every volume -----------------------
if [ -n "$INDEX" ]; then
  VOLDIR=$(dirname -- "$INDEX")
  say "checking the volume index $INDEX"
  [ -f "$INDEX.sig" ] || die "no $INDEX.sig beside the index"
  trusted_signers > allowed_signers
  [ -s allowed_signers ] || die "$PUBKEY holds no ssh-ed25519 key"
  # NAME.volumes.sig holds one armored SSHSIG block per signer: check each alone.
  awk '/-----BEGIN SSH SIGNATURE-----/ {n++} n {print > ("index-sig-" n ".sig")}' "$INDEX.sig"
  good=0
  for sig in index-sig-*.sig; do
    [ -f "$sig" ] || continue
    if ssh-keygen -Y verify -f allowed_signers -I airbundle -n airbundle -s "$sig" < "$INDEX" >/dev/null; then
      good=$((good + 1))
    fi
  done
  [ "$good" -ge 1 ] || die "no signature by $PUBKEY verifies over $INDEX"
  index_volumes > volumes.txt
  [ -s volumes.txt ] || die "the index lists no volumes"
  while read -r vname vsize vfrom vhex; do
    case "$vname" in */*|.*) die "the index names a volume outside its folder: $vname";; esac
    [ -f "$VOLDIR/$vname" ] || die "volume $vname is missing"
    [ "$(stat -c %s -- "$VOLDIR/$vname")" = "$vsize" ] || die "volume $vname does not have the indexed size $vsize"
    got=$(tail -c +"$((vfrom + 1))" -- "$VOLDIR/$vname" | sha256sum | cut -c 1-64)
    [ "$got" = "$vhex" ] || die "volume $vname is damaged: its sha256 differs from the signed index"
  done < volumes.txt
  echo "   $(wc -l < volumes.txt) volume(s) match the signed index"
fi

# --- 1. look before extracting ----------------------------------------------
say "listing $BUNDLE"
bundle_bytes | zstd -qdc | tar -tvf - > listing.txt || die "the bundle does not decompress or is not a tar archive"
bundle_bytes | zstd -qdc | tar -tf - > names.txt || die "the bundle does not decompress or is not a tar archive"
[ -s names.txt ] || die "the archive is empty"
not_regular=$(grep -v '^-' listing.txt || true)
[ -z "$not_regular" ] || die "members that are not regular files: $not_regular"
[ "$(head -n 1 names.txt)" = airbundle/manifest.json ] || die "the first member is not airbundle/manifest.json"
dups=$(LC_ALL=C sort names.txt | uniq -d)
[ -z "$dups" ] || die "member names that occur twice: $dups"
NAME_RE='^(airbundle/manifest\.json|airbundle/signatures/[0-9]{2}\.sig|images/oci-layout|images/index\.json|images/blobs/sha256/[0-9a-f]{64}|repos/[A-Za-z0-9][A-Za-z0-9._-]*\.bundle)$'
# Carried files (format version 2): files/NAME, NAME relative, no empty, '.' or '..' part.
FILE_PART='([^/.][^/]*|\.[^/.][^/]*|\.\.[^/]+)'
FILE_RE="^files/$FILE_PART(/$FILE_PART)*\$"
odd=$(grep -Ev "$NAME_RE" names.txt | grep -Ev "$FILE_RE" || true)
[ -z "$odd" ] || die "unexpected member names: $odd"

# --- 2. extract --------------------------------------------------------------
say "extracting into $WORK/unpacked"
mkdir unpacked
bundle_bytes | zstd -qdc | tar -xf - -C unpacked
odd=$(find unpacked ! -type f ! -type d)
[ -z "$odd" ] || die "extraction produced something other than files and folders: $odd"

# --- 3. signature over the manifest's exact bytes ------------------------------
say "checking signatures against $PUBKEY"
trusted_signers > allowed_signers
[ -s allowed_signers ] || die "$PUBKEY holds no ssh-ed25519 key"
good=0
for sig in unpacked/airbundle/signatures/*.sig; do
  [ -f "$sig" ] || continue
  if ssh-keygen -Y verify -f allowed_signers -I airbundle -n airbundle -s "$sig" < "$MANIFEST"; then
    good=$((good + 1))
  else
    echo "   ($sig is not a valid signature by a key in $PUBKEY)"
  fi
done
[ "$good" -ge 1 ] || die "no signature by $PUBKEY verifies over the manifest"

# --- 4. members against the signed manifest ---------------------------------
say "checking every member against the manifest"
[ "$(manifest_field apiVersion)" = airbundle/v1 ] || die "manifest apiVersion is not airbundle/v1"
case "$(manifest_field formatVersion)" in
  1) ! grep -q '^files/' names.txt || die "a format version 1 bundle carries files/ members" ;;
  2) ;;  # a bundle that carries files (incremental: possibly none of them)
  *) die "bundle format version is not 1 or 2" ;;
esac
manifest_sums > SHA256SUMS
grep -v '^airbundle/' names.txt | LC_ALL=C sort > content.txt || true
cut -c 67- SHA256SUMS | LC_ALL=C sort > listed.txt
diff content.txt listed.txt || die "the archive's members differ from the manifest's list (< archive only, > manifest only)"
(cd unpacked && sha256sum --strict --quiet -c ../SHA256SUMS) || die "member content differs from the manifest"
misnamed=$(awk 'index($2, "images/blobs/sha256/") == 1 && substr($2, 21) != $1' SHA256SUMS)
[ -z "$misnamed" ] || die "blobs not named by their digest: $misnamed"
expires=$(manifest_expires)
if [ -n "$expires" ]; then
  now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  if [[ "$now" > "$expires" ]]; then echo "WARNING: the manifest says the bundle expired at $expires"; fi
fi

INCREMENTAL=$(manifest_is_incremental)
if [ "$INCREMENTAL" = yes ]; then
  echo "   incremental bundle: its images and repos build on what the far side holds;"
  echo "   listing what it carries instead of copying images and cloning repos"
fi

# --- 5. images with skopeo -----------------------------------------------------
n=0
while [ "$INCREMENTAL" = no ] && read -r digest ref; do
  [ -n "$ref" ] || continue
  need skopeo
  n=$((n + 1))
  say "image $ref"
  skopeo copy --quiet --all --preserve-digests "oci:unpacked/images:$ref" "dir:image-$n" \
    || die "skopeo cannot copy $ref from the bundle's OCI layout"
  got="sha256:$(sha256sum < "image-$n/manifest.json" | cut -c 1-64)"
  [ "$got" = "$digest" ] || die "$ref: skopeo copied $got, the manifest says $digest"
done < <(manifest_images)

# --- 6. git repositories -------------------------------------------------------
while read -r name head; do
  [ -n "$name" ] || continue
  need git
  say "repo $name"
  if [ "$INCREMENTAL" = yes ]; then
    # Without the base commits git cannot clone it; its header still lists the refs.
    git bundle list-heads "unpacked/repos/$name.bundle" | grep -v ' HEAD$' | LC_ALL=C sort > "refs-$name.txt" \
      || die "repo $name: git cannot read its bundle header"
    manifest_refs "$name" | LC_ALL=C sort > "refs-$name.expected"
    diff "refs-$name.expected" "refs-$name.txt" || die "repo $name: bundle refs differ from the manifest"
    continue
  fi
  git -c transfer.fsckObjects=true clone --quiet --mirror "unpacked/repos/$name.bundle" "repos/$name.git" \
    || die "repo $name: git cannot clone its bundle"
  git -C "repos/$name.git" for-each-ref --format='%(objectname) %(refname)' | LC_ALL=C sort > "refs-$name.txt"
  manifest_refs "$name" | LC_ALL=C sort > "refs-$name.expected"
  diff "refs-$name.expected" "refs-$name.txt" || die "repo $name: refs differ from the manifest (< manifest, > clone)"
  if [ -n "$head" ]; then git -C "repos/$name.git" symbolic-ref HEAD "$head"; fi
done < <(manifest_repos)

say "OK: $BUNDLE checked; $(wc -l < SHA256SUMS) members match the signed manifest"
if [ $# -eq 3 ]; then
  echo "unpacked in $WORK (images: image-N/, repos: repos/NAME.git, files: unpacked/files/)"
fi
