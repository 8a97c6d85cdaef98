#!/bin/sh
# fedloom container entrypoint: `researcher`, `node` or `certs`, else runs its arguments.
#
#   researcher [EXPERIMENT] [FLAGS...]
#       fedloom researcher run EXPERIMENT --address $FEDLOOM_ADDRESS --out $FEDLOOM_OUT
#       with --certs $FEDLOOM_CERT_DIR when it holds researcher.pem, else --insecure
#       if FEDLOOM_INSECURE=1, else it refuses to start.
#       EXPERIMENT defaults to $FEDLOOM_EXPERIMENT.
#   node [FLAGS...]
#       First start (empty home): fedloom node init --name $NODE_NAME. Every start:
#       makes the demo dataset if FEDLOOM_DEMO_DATASET=1, registers the datasets of
#       $FEDLOOM_DATASETS and of the manifest $FEDLOOM_DATASET_MANIFEST that are not
#       registered yet, then fedloom node start --researcher $FEDLOOM_RESEARCHER with
#       --ca/--cert/--key from $FEDLOOM_CERT_DIR (ca.pem, node.pem, node.key), or
#       --insecure if FEDLOOM_INSECURE=1, plus --allow-unapproved if
#       FEDLOOM_ALLOW_UNAPPROVED=1.
#   certs
#       One-shot, as root: creates a CA in $FEDLOOM_PKI_DIR if there is none, then
#       fills every folder mounted under $FEDLOOM_CERT_EXPORT: `researcher/` gets
#       the server certificate, any other `<node_id>/` that node's certificate
#       (issued on first sight). Each folder is handed to the fedloom user.
#
# Dataset entries (FEDLOOM_DATASETS, ';' or newline separated; the manifest has one
# per line, '#' comments allowed):  name|tags|path[|type[|target]]
#   e.g.  heart|#heart,#csv|/data/datasets/heart.csv|csv|target
set -eu

CERT_DIR="${FEDLOOM_CERT_DIR:-/certs}"
INSECURE="${FEDLOOM_INSECURE:-0}"
RUN_AS="${FEDLOOM_USER:-fedloom}"

log() { printf '[fedloom-entrypoint] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 2
}

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

researcher_role() {
    experiment="${FEDLOOM_EXPERIMENT:-}"
    if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
        experiment="$1"
        shift
    fi
    [ -n "$experiment" ] || die "no experiment: pass its path after 'researcher' or set FEDLOOM_EXPERIMENT"
    [ -f "$experiment" ] || die "experiment file $experiment not found: mount it into the container"
    set -- researcher run "$experiment" \
        --address "${FEDLOOM_ADDRESS:-0.0.0.0:50051}" --out "${FEDLOOM_OUT:-/results}" "$@"
    if [ -f "$CERT_DIR/researcher.pem" ]; then
        set -- "$@" --certs "$CERT_DIR"
    elif [ "$INSECURE" = 1 ]; then
        log "WARNING: FEDLOOM_INSECURE=1: serving WITHOUT TLS; node identities are not verified"
        set -- "$@" --insecure
    else
        die "no $CERT_DIR/researcher.pem: mount the researcher's certificates (fedloom certs init) at $CERT_DIR, or set FEDLOOM_INSECURE=1 for a local demo"
    fi
    log "fedloom $*"
    exec fedloom "$@"
}

# Register one `name|tags|path[|type[|target]]` entry unless the home already has it.
add_dataset() {
    entry="$1"
    name=$(printf '%s' "$entry" | cut -d'|' -f1 | tr -d ' ')
    tags=$(printf '%s' "$entry" | cut -d'|' -f2 | tr -d ' ')
    path=$(printf '%s' "$entry" | cut -d'|' -f3)
    dtype=$(printf '%s' "$entry" | cut -s -d'|' -f4 | tr -d ' ')
    target=$(printf '%s' "$entry" | cut -s -d'|' -f5 | tr -d ' ')
    if [ -z "$name" ] || [ -z "$tags" ] || [ -z "$path" ]; then
        die "dataset entry '$entry' is not name|tags|path[|type[|target]]"
    fi
    if fedloom node --home "$HOME_DIR" dataset show "$name" >/dev/null 2>&1; then
        return 0
    fi
    set -- node --home "$HOME_DIR" dataset add --name "$name" --tags "$tags" --path "$path"
    [ -z "$dtype" ] || set -- "$@" --type "$dtype"
    [ -z "$target" ] || set -- "$@" --target "$target"
    log "registering dataset $name ($tags) from $path"
    fedloom "$@" >/dev/null
}

add_datasets_from() {
    printf '%s\n' "$1" | tr ';' '\n' | while IFS= read -r line; do
        line=$(printf '%s' "$line" | sed 's/#[^|]*$//; s/^[[:space:]]*//; s/[[:space:]]*$//')
        case "$line" in
        '' | '#'*) continue ;;
        esac
        add_dataset "$line"
    done
}

node_role() {
    HOME_DIR="${FEDLOOM_NODE_HOME:-/data/node}"
    researcher="${FEDLOOM_RESEARCHER:-}"
    [ -n "$researcher" ] || die "set FEDLOOM_RESEARCHER=HOST:PORT (the researcher's address)"
    name="${NODE_NAME:-$(hostname)}"

    if [ -z "$(ls -A "$HOME_DIR" 2>/dev/null)" ]; then
        log "first start: initialising node home $HOME_DIR as $name"
        if [ -n "${FEDLOOM_NODE_ID:-}" ]; then
            fedloom node --home "$HOME_DIR" init --name "$name" --node-id "$FEDLOOM_NODE_ID" >/dev/null
        elif [ -f "$CERT_DIR/node.pem" ]; then
            # The node's identity is the one its certificate was issued to.
            fedloom node --home "$HOME_DIR" init --name "$name" --cert "$CERT_DIR/node.pem" >/dev/null
        else
            fedloom node --home "$HOME_DIR" init --name "$name" >/dev/null
        fi
    fi

    if [ "${FEDLOOM_DEMO_DATASET:-0}" = 1 ]; then
        demo_csv="${FEDLOOM_DEMO_CSV:-/data/datasets/demo.csv}"
        if [ ! -f "$demo_csv" ]; then
            log "generating the demo dataset $demo_csv"
            python3 -m fedloom.demo_data "$demo_csv" \
                --node-index "${FEDLOOM_DEMO_NODE_INDEX:-0}" \
                --samples "${FEDLOOM_DEMO_SAMPLES:-600}" >/dev/null
        fi
        add_dataset "demo|${FEDLOOM_DEMO_TAGS:-#demo}|$demo_csv|csv|y"
    fi
    add_datasets_from "${FEDLOOM_DATASETS:-}"
    manifest="${FEDLOOM_DATASET_MANIFEST:-}"
    if [ -n "$manifest" ]; then
        [ -f "$manifest" ] || die "dataset manifest $manifest not found"
        add_datasets_from "$(cat "$manifest")"
    fi

    set -- node --home "$HOME_DIR" start --researcher "$researcher" "$@"
    if [ -f "$CERT_DIR/node.pem" ]; then
        set -- "$@" --ca "$CERT_DIR/ca.pem" --cert "$CERT_DIR/node.pem" --key "$CERT_DIR/node.key"
    elif [ "$INSECURE" = 1 ]; then
        log "WARNING: FEDLOOM_INSECURE=1: connecting WITHOUT TLS"
        set -- "$@" --insecure
    else
        die "no $CERT_DIR/node.pem: mount this node's certificates (ca.pem, node.pem, node.key from fedloom certs) at $CERT_DIR, or set FEDLOOM_INSECURE=1 on both sides for a local demo"
    fi
    if [ "${FEDLOOM_ALLOW_UNAPPROVED:-0}" = 1 ]; then
        set -- "$@" --allow-unapproved
    fi
    log "fedloom $*"
    exec fedloom "$@"
}

# Copy $1's files named $3... from folder $2 into export folder $1 for the fedloom user.
export_files() {
    dest="$1"
    src="$2"
    shift 2
    for file in "$@"; do
        mode=0644
        case "$file" in *.key) mode=0600 ;; esac
        install -m "$mode" -o "$RUN_AS" -g "$RUN_AS" "$src/$file" "$dest/$file"
    done
    chown "$RUN_AS:$RUN_AS" "$dest"
    chmod 0700 "$dest"
}

certs_role() {
    pki="${FEDLOOM_PKI_DIR:-/pki}"
    export_root="${FEDLOOM_CERT_EXPORT:-/export}"
    [ "$(id -u)" = 0 ] || die "the certs role runs as root (compose: user: root) to hand each mounted folder to the $RUN_AS user"
    if [ ! -f "$pki/ca.pem" ]; then
        set --
        for host in $(printf '%s' "${FEDLOOM_RESEARCHER_HOSTS:-researcher,localhost,127.0.0.1}" | tr ',' ' '); do
            set -- "$@" --researcher-host "$host"
        done
        fedloom certs init --out "$pki" "$@"
    else
        log "CA present in $pki: reusing it (remove that volume to start over)"
    fi
    found=0
    for dir in "$export_root"/*/; do
        [ -d "$dir" ] || continue
        dir="${dir%/}"
        target=$(basename "$dir")
        found=$((found + 1))
        if [ "$target" = researcher ]; then
            export_files "$dir" "$pki" ca.pem researcher.pem researcher.key
            if [ -n "${FEDLOOM_ALLOWED_NODES:-}" ]; then
                printf '%s\n' "$FEDLOOM_ALLOWED_NODES" | tr ',' '\n' >"$dir/allowed_nodes.txt"
                chown "$RUN_AS:$RUN_AS" "$dir/allowed_nodes.txt"
            fi
        else
            [ -f "$pki/nodes/$target/node.pem" ] || fedloom certs add-node --out "$pki" --node "$target"
            export_files "$dir" "$pki/nodes/$target" ca.pem node.pem node.key
        fi
        log "certificates for $target ready"
    done
    [ "$found" -gt 0 ] || log "WARNING: nothing mounted under $export_root: no certificates handed out"
}

case "${1:-}" in
researcher)
    shift
    researcher_role "$@"
    ;;
node)
    shift
    node_role "$@"
    ;;
certs)
    shift
    certs_role "$@"
    ;;
'' | -h | --help | help)
    usage
    ;;
*)
    exec "$@"
    ;;
esac
