# Shared by launch/tpu_vm.sh and launch/gpu_multihost.sh (sourced, not run).

# Prints "<script>: MESSAGE" to stderr and exits 2 (a usage or set-up error).
die() {
  echo "${0##*/}: $*" >&2
  exit 2
}

# One shell word, quoted only when it needs to be (for printing and remote commands).
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_@%+=:,./~-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# The words, each quoted as needed, joined by spaces.
quote_all() {
  local out="" word
  for word in "$@"; do out+="${out:+ }$(quote "$word")"; done
  printf '%s' "$out"
}
