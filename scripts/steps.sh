# Shared by the reproduce_*.sh scripts (sourced, not run): steps that are skipped when their
# output exists, so an interrupted run continues where it stopped.
step() {  # step OUTPUT COMMAND...: run COMMAND unless OUTPUT exists
  local out="$1"; shift
  if [ -e "$out" ]; then echo "== $out exists, skipped"; return; fi
  echo "== $*"; "$@"
}
step_json() {  # step_json FILE COMMAND...: COMMAND's standard output into FILE, unless FILE exists
  local out="$1"; shift
  if [ -s "$out" ]; then echo "== $out exists, skipped"; return; fi
  echo "== $* > $out"; mkdir -p "$(dirname "$out")"; "$@" > "$out.tmp"; mv "$out.tmp" "$out"
}
