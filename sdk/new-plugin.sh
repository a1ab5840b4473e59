#!/bin/sh
# Creates a policy plugin crate from the SDK's template.
#
#   sdk/new-plugin.sh DIR [NAME]
#
# DIR must not exist. NAME (default: DIR's base name) becomes the crate
# name; the component is target/wasm32-wasip2/release/<NAME with _>.wasm.
set -eu
[ $# -ge 1 ] || { echo "usage: $0 DIR [NAME]" >&2; exit 2; }
dir=$1
name=${2:-$(basename "$dir")}
case $name in
    *[!a-z0-9_-]*|[!a-z]*) echo "$0: NAME must be [a-z][a-z0-9_-]*: $name" >&2; exit 2 ;;
esac
[ ! -e "$dir" ] || { echo "$0: $dir exists" >&2; exit 1; }
sdk=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dir"
cp -R "$sdk/template/." "$dir/"
rm -rf "$dir/target" "$dir/Cargo.lock"
sed -i -e "s|^name = \"my-policy\"|name = \"$name\"|" \
       -e "s|^drivers-policy-sdk = { path = \"..\" }|drivers-policy-sdk = { path = \"$sdk\" }|" \
       "$dir/Cargo.toml"
sed -i -e "s|my_policy.wasm|$(echo "$name" | tr - _).wasm|" "$dir/src/lib.rs"
echo "created $dir: cd $dir && cargo build --release --target wasm32-wasip2"
