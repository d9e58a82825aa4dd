#!/bin/sh
# Prepare a Temporal namespace for SecFlow: wait for the server, make sure the
# namespace exists, and register SecFlow's custom search attributes.
#
# Runs once per `docker compose up` as the temporal-register-search-attributes
# service (temporalio/admin-tools image), before any worker starts: a workflow that
# upserts an unregistered search attribute fails its workflow task. Safe to run any
# number of times: what already exists is left as it is.
#
# Environment (all optional):
#   TEMPORAL_ADDRESS              frontend host:port          (default temporal:7233)
#   TEMPORAL_NAMESPACE            namespace to prepare        (default default)
#   SECFLOW_NAMESPACE_RETENTION   retention of closed workflow histories when the
#                                 namespace has to be created (default 168h)
#   REGISTER_MAX_ATTEMPTS         attempts per step before giving up (default 60)
#   REGISTER_SLEEP_SECONDS        pause between attempts, seconds    (default 2)
#
# Exit status: 0 when the namespace and every attribute are in place, 1 otherwise
# (the message says which step failed and the server's last answer).
set -eu

address="${TEMPORAL_ADDRESS:-temporal:7233}"
namespace="${TEMPORAL_NAMESPACE:-default}"
retention="${SECFLOW_NAMESPACE_RETENTION:-168h}"
max_attempts="${REGISTER_MAX_ATTEMPTS:-60}"
sleep_seconds="${REGISTER_SLEEP_SECONDS:-2}"

# name=type. Keep in line with the SearchAttributeKey definitions in workflows/.
SEARCH_ATTRIBUTES="
SecflowStatus=Keyword
SecflowAwaiting=KeywordList
SecflowIncidentSeverity=Keyword
SecflowIncidentState=Keyword
"

log() {
    printf '%s register-search-attributes: %s\n' "$(date -u '+%Y-%m-%dT%H:%M:%SZ')" "$*"
}

fail() {
    log "ERROR: $*" >&2
    exit 1
}

# The CLI's answer on one line, so a log line stays a log line.
one_line() {
    printf '%s' "$1" | tr '\n' ' ' | cut -c1-400
}

case "$max_attempts" in
    '' | *[!0-9]* | 0) fail "REGISTER_MAX_ATTEMPTS must be a positive integer, got '$max_attempts'" ;;
esac
case "$sleep_seconds" in
    '' | *[!0-9]*) fail "REGISTER_SLEEP_SECONDS must be a whole number of seconds, got '$sleep_seconds'" ;;
esac
command -v temporal >/dev/null 2>&1 ||
    fail "the 'temporal' CLI is not on PATH; run this script in the temporalio/admin-tools image"

wait_for_server() {
    attempt=1
    out=""
    while :; do
        if out=$(temporal operator cluster health --address "$address" 2>&1); then
            case "$out" in
                *SERVING*)
                    log "Temporal at $address answers SERVING"
                    return 0
                    ;;
            esac
        fi
        if [ "$attempt" -ge "$max_attempts" ]; then
            fail "Temporal at $address did not answer SERVING after $max_attempts attempts; last answer: $(one_line "$out")"
        fi
        log "waiting for Temporal at $address (attempt $attempt/$max_attempts): $(one_line "$out")"
        attempt=$((attempt + 1))
        sleep "$sleep_seconds"
    done
}

ensure_namespace() {
    attempt=1
    out=""
    while :; do
        if temporal operator namespace describe --address "$address" --namespace "$namespace" >/dev/null 2>&1; then
            log "namespace '$namespace' exists"
            return 0
        fi
        if out=$(temporal operator namespace create --address "$address" --namespace "$namespace" \
            --retention "$retention" 2>&1); then
            log "namespace '$namespace' created (retention $retention)"
            return 0
        fi
        case "$out" in
            *"already exists"* | *"AlreadyExists"* | *"already registered"*)
                log "namespace '$namespace' exists"
                return 0
                ;;
        esac
        if [ "$attempt" -ge "$max_attempts" ]; then
            fail "could not create namespace '$namespace' after $max_attempts attempts; last answer: $(one_line "$out")"
        fi
        log "namespace '$namespace' not ready yet (attempt $attempt/$max_attempts): $(one_line "$out")"
        attempt=$((attempt + 1))
        sleep "$sleep_seconds"
    done
}

# register_attribute NAME TYPE
register_attribute() {
    name=$1
    type=$2
    attempt=1
    out=""
    while :; do
        if out=$(temporal operator search-attribute create --address "$address" --namespace "$namespace" \
            --name "$name" --type "$type" 2>&1); then
            log "search attribute $name ($type) is registered in namespace '$namespace'"
            return 0
        fi
        case "$out" in
            # Same name, other type: retrying cannot fix this and the workflows would
            # fail on upsert, so stop here and say so.
            *"different type"*)
                fail "search attribute $name exists in namespace '$namespace' with another type than $type: $(one_line "$out")"
                ;;
            *"already exists"* | *"AlreadyExists"*)
                log "search attribute $name ($type) already registered in namespace '$namespace'"
                return 0
                ;;
        esac
        if [ "$attempt" -ge "$max_attempts" ]; then
            fail "could not register search attribute $name ($type) after $max_attempts attempts; last answer: $(one_line "$out")"
        fi
        # A namespace created a moment ago can take a few seconds to reach every
        # server cache ("namespace not found"): that clears by itself.
        log "search attribute $name not registered yet (attempt $attempt/$max_attempts): $(one_line "$out")"
        attempt=$((attempt + 1))
        sleep "$sleep_seconds"
    done
}

# Final check: every attribute is listed for the namespace.
verify_attributes() {
    if ! listed=$(temporal operator search-attribute list --address "$address" --namespace "$namespace" 2>&1); then
        fail "could not list search attributes of namespace '$namespace': $(one_line "$listed")"
    fi
    for pair in $SEARCH_ATTRIBUTES; do
        name=${pair%%=*}
        case "$listed" in
            *"$name"*) ;;
            *) fail "search attribute $name is missing from namespace '$namespace' after registration" ;;
        esac
    done
}

log "preparing namespace '$namespace' on $address"
wait_for_server
ensure_namespace
for pair in $SEARCH_ATTRIBUTES; do
    register_attribute "${pair%%=*}" "${pair#*=}"
done
verify_attributes
log "done: namespace '$namespace' has SecFlow's search attributes"
