#!/usr/bin/env bash
# Installs tessera as a system service, or removes it (--uninstall). Run it again at any time:
# a file already as it should be is left alone (same bytes, same mtime).
#
#   sudo appliance/install.sh                  # after `cargo build --release`
#   sudo TESSERA_BIN=/path/to/tessera appliance/install.sh
#   DESTDIR=/tmp/stage appliance/install.sh    # stage for a package: no user, no systemctl
#   sudo appliance/install.sh --uninstall      # keeps an edited config, the data and the user
#
# Environment: TESSERA_BIN (default: target/release/tessera of this checkout), PREFIX (default
# /usr/local), DESTDIR (default: none, i.e. this system).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
prefix=${PREFIX:-/usr/local}
destdir=${DESTDIR:-}
bin=${TESSERA_BIN:-$here/../target/release/tessera}

# Where each file goes (under DESTDIR). The config is /etc/tessera whatever PREFIX is: the unit's
# ConfigurationDirectory=tessera names it.
bin_path=$prefix/bin/tessera
unit_path=$prefix/lib/systemd/system/tessera.service
sysctl_path=$prefix/lib/sysctl.d/60-tessera.conf
sysusers_path=$prefix/lib/sysusers.d/tessera.conf
man_path=$prefix/share/man/man1/tessera.1
bash_path=$prefix/share/bash-completion/completions/tessera
zsh_path=$prefix/share/zsh/site-functions/_tessera
fish_path=$prefix/share/fish/vendor_completions.d/tessera.fish
config_path=/etc/tessera/tessera.toml
data_dir=/var/lib/tessera
# Generated files (unit, man page, completions, config) before they are compared and put.
work=
# Set by put when a file was written.
changed=

usage() {
    # The comment block at the top of this file.
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
}

say() {
    echo "install.sh: $*"
}

# put SOURCE DEST MODE: installs SOURCE as DESTDIR/DEST unless DEST already has its bytes.
put() {
    local target=$destdir$2
    if [ -f "$target" ] && cmp -s "$1" "$target"; then
        return
    fi
    install -D -m "$3" "$1" "$target"
    say "installed $2"
    changed=yes
}

# The shipped config: the embedded default, with the data in the unit's StateDirectory.
shipped_config() {
    sed "s|^data_dir = .*|data_dir = \"$data_dir\"|" "$here/tessera.toml"
}

# The config is installed once and never overwritten: an edited one stays, and the shipped one
# is put beside it as tessera.toml.new to compare with.
put_config() {
    local shipped=$1
    if [ ! -e "$destdir$config_path" ]; then
        put "$shipped" "$config_path" 0644
    elif ! cmp -s "$shipped" "$destdir$config_path"; then
        if ! { [ -f "$destdir$config_path.new" ] && cmp -s "$shipped" "$destdir$config_path.new"; }; then
            say "kept the edited $config_path; the shipped one is $config_path.new"
        fi
        put "$shipped" "$config_path.new" 0644
    fi
}

# The system user (only on this system, never under DESTDIR).
make_user() {
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers "$sysusers_path"
    elif ! getent passwd tessera >/dev/null; then
        useradd --system --user-group --home-dir "$data_dir" --no-create-home \
            --shell /usr/sbin/nologin --comment "tessera cache appliance" tessera
    fi
}

# systemd is told about the new files when it runs this system.
systemd_running() {
    [ -z "$destdir" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

do_install() {
    if [ ! -x "$bin" ]; then
        echo "install.sh: $bin: no such executable; run \`cargo build --release\` or set TESSERA_BIN" >&2
        exit 1
    fi
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    sed "s|^ExecStart=/usr/local/bin/tessera |ExecStart=$bin_path |" "$here/tessera.service" >"$work/unit"
    "$bin" man >"$work/man"
    "$bin" completions bash >"$work/bash"
    "$bin" completions zsh >"$work/zsh"
    "$bin" completions fish >"$work/fish"
    shipped_config >"$work/config"

    put "$bin" "$bin_path" 0755
    put "$work/unit" "$unit_path" 0644
    put "$here/sysctl.d/60-tessera.conf" "$sysctl_path" 0644
    put "$here/sysusers.d/tessera.conf" "$sysusers_path" 0644
    put "$work/man" "$man_path" 0644
    put "$work/bash" "$bash_path" 0644
    put "$work/zsh" "$zsh_path" 0644
    put "$work/fish" "$fish_path" 0644
    put_config "$work/config"

    if [ -n "$destdir" ]; then
        return
    fi
    make_user
    # Applied now as well as at every boot; a container's read-only /proc/sys only warns.
    command -v sysctl >/dev/null && sysctl -q -p "$sysctl_path" || say "could not apply $sysctl_path now; it applies at boot"
    if systemd_running && [ -n "$changed" ]; then
        systemctl daemon-reload
        # A running service keeps its old binary and settings until the operator restarts it.
        if systemctl is-active --quiet tessera.service; then
            say "restart it to use what changed: systemctl restart tessera"
        else
            say "start it with: systemctl enable --now tessera"
        fi
    fi
}

# remove PATH: removes DESTDIR/PATH when it is there.
remove() {
    if [ -e "$destdir$1" ] || [ -L "$destdir$1" ]; then
        rm -f "$destdir$1"
        say "removed $1"
    fi
}

do_uninstall() {
    if systemd_running; then
        systemctl disable --now tessera.service 2>/dev/null || true
    fi
    local path
    for path in "$bin_path" "$unit_path" "$sysctl_path" "$sysusers_path" "$man_path" \
        "$bash_path" "$zsh_path" "$fish_path" "$config_path.new"; do
        remove "$path"
    done
    if [ -f "$destdir$config_path" ]; then
        if cmp -s <(shipped_config) "$destdir$config_path"; then
            remove "$config_path"
        else
            say "kept the edited $config_path"
        fi
    fi
    rmdir "$destdir/etc/tessera" 2>/dev/null || true
    if systemd_running; then
        systemctl daemon-reload
    fi
    if [ -z "$destdir" ]; then
        say "kept the data in $data_dir and the user tessera; remove them by hand if wanted"
    fi
}

case "${1:-}" in
"") do_install ;;
--uninstall) do_uninstall ;;
-h | --help) usage ;;
*)
    echo "install.sh: unknown argument ${1}; use --uninstall or --help" >&2
    exit 2
    ;;
esac
