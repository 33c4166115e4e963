#!/usr/bin/env bash
# Nightly `dmreg batch` for cron: co-register the rasters that arrived in INCOMING.
#
# Configured by environment variables (cron passes them on the crontab line):
#   DMREG_BASE      root of the defaults below                     (default /srv/dmreg)
#   INCOMING        folder of moving rasters                       (default $DMREG_BASE/incoming)
#   REFERENCE       one reference raster for every moving raster   (default $DMREG_BASE/reference.tif)
#   REFERENCE_DIR   or: a folder of references, paired by footprint (takes precedence over REFERENCE)
#   OUT             output folder                                  (default $DMREG_BASE/aligned)
#   LOG_DIR         dated logs                                     (default $DMREG_BASE/logs)
#   KEEP_LOG_DAYS   delete logs older than this many days          (default 30)
#   WORKERS         dmreg batch --workers                          (default 2)
#   PATTERN         which files of INCOMING                        (default *.tif)
#   DMREG           the dmreg executable: cron's PATH is minimal, give a venv's bin/dmreg (default dmreg)
#   DMREG_ARGS      more dmreg batch options, split on spaces      (e.g. "--matcher distillmatch --device cuda")
#   NICE            niceness of the run                            (default 10)
#   LOCK_FILE       this wrapper's lock                            (default $LOG_DIR/dmreg-nightly.lock)
#
# Everything goes to LOG_DIR/dmreg-nightly-YYYY-MM-DD.log with a timestamp per line, dmreg's line per pair
# included (--log-file). Only a run that needs attention writes a line to stderr, so that cron mails it;
# a clean run mails nothing.
# Exit code: dmreg batch's (0 ok, 7 OUT locked by another dmreg, 8 some pairs failed, else an error);
# 0 when an earlier invocation of this wrapper is still running (it is left alone, and logged).
set -euo pipefail

DMREG_BASE=${DMREG_BASE:-/srv/dmreg}
INCOMING=${INCOMING:-$DMREG_BASE/incoming}
REFERENCE_DIR=${REFERENCE_DIR:-}
REFERENCE=${REFERENCE:-$DMREG_BASE/reference.tif}
OUT=${OUT:-$DMREG_BASE/aligned}
LOG_DIR=${LOG_DIR:-$DMREG_BASE/logs}
KEEP_LOG_DAYS=${KEEP_LOG_DAYS:-30}
WORKERS=${WORKERS:-2}
PATTERN=${PATTERN:-*.tif}
DMREG=${DMREG:-dmreg}
DMREG_ARGS=${DMREG_ARGS:-}
NICE=${NICE:-10}
LOCK_FILE=${LOCK_FILE:-$LOG_DIR/dmreg-nightly.lock}

mkdir -p "$LOG_DIR"
LOG="$LOG_DIR/dmreg-nightly-$(printf '%(%F)T' -1).log"
exec 3>&2 >>"$LOG" 2>&1    # fd 3 keeps cron's stderr (mailed); the rest goes to the log

# Prefix each line of stdin with the time and this run's process id, so overlapping runs stay apart.
stamp() {
    local line
    while IFS= read -r line || [[ -n $line ]]; do
        printf '%(%F %T)T [%s] %s\n' -1 "$$" "$line"
    done
}

log() { printf '%s\n' "$*" | stamp; }

# Lines through to the log, and to cron's stderr as well.
copy_to_mail() {
    local line
    while IFS= read -r line; do
        printf '%s\n' "$line"
        printf '%s\n' "$line" >&3
    done
}

# A line for the log and for cron's mail.
alert() {
    log "$*"
    printf 'dmreg-nightly: %s\n' "$*" >&3
}

reference_args() {
    if [[ -n $REFERENCE_DIR ]]; then
        printf '%s\n' --reference-dir "$REFERENCE_DIR"
    else
        printf '%s\n' --reference "$REFERENCE"
    fi
}

run_batch() {
    local -a refs extra
    mapfile -t refs < <(reference_args)
    read -r -a extra <<<"$DMREG_ARGS"
    local -a cmd=("$DMREG" batch "$INCOMING" "${refs[@]}" --out "$OUT" --pattern "$PATTERN"
                  --workers "$WORKERS" -q --log-file "$LOG" "${extra[@]}")
    log "start: ${cmd[*]}"
    # with -q dmreg prints errors only: they go to cron's mail as well as to the log
    nice -n "$NICE" "${cmd[@]}" 2>&1 | stamp | copy_to_mail
}

report_exit() {
    local rc=$1 seconds=$2
    case $rc in
        0) log "ok: every pair registered or already complete (${seconds} s); results in $OUT/summary.json" ;;
        7) alert "another dmreg batch holds the lock on $OUT ($OUT/.dmreg-batch.lock); nothing done; log: $LOG" ;;
        8) alert "some pairs failed (${seconds} s): see $OUT/summary.csv; log: $LOG" ;;
        *) alert "dmreg batch exited with code $rc (${seconds} s); log: $LOG" ;;
    esac
}

main() {
    exec 9>"$LOCK_FILE"
    if ! flock -n 9; then
        log "an earlier run still holds $LOCK_FILE: leaving it alone"
        return 0
    fi
    if ! command -v "$DMREG" >/dev/null; then
        alert "DMREG=$DMREG is not an executable (cron's PATH is minimal: give its absolute path)"
        return 127
    fi
    find "$LOG_DIR" -maxdepth 1 -type f -name 'dmreg-nightly-*.log' -mtime +"$KEEP_LOG_DAYS" -delete
    local rc=0 start=$SECONDS
    run_batch || rc=$?
    report_exit "$rc" $((SECONDS - start))
    return "$rc"
}

main
