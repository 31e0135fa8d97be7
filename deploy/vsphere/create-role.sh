#!/bin/sh
# Create (or bring up to date) the vCenter role vmguard's account needs, with exactly the
# privileges listed in privileges.txt next to this script, and grant it to the account.
# docs/install.md ("vSphere prerequisites") explains every privilege; run it again after an
# upgrade of vmguard: an existing role is set to exactly the current list.
#
# usage: create-role.sh [-n ROLE] [-p PRINCIPAL [-g]] [-e PATH] [-x]
#   -n ROLE       the role's name (default: vmguard)
#   -p PRINCIPAL  the user (or with -g, group) to grant the role to, e.g. svc-vmguard@vsphere.local;
#                 without -p only the role is created
#   -g            PRINCIPAL is a group
#   -e PATH       the inventory path the permission is set on, propagating to everything below
#                 (default: /, the vCenter root; tags and the session need no more than read there)
#   -x            print the govc commands instead of running them
#
# govc finds vCenter through its usual environment: GOVC_URL, GOVC_USERNAME, GOVC_PASSWORD
# (an administrator's account), and GOVC_TLS_CA_CERTS or GOVC_TLS_KNOWN_HOSTS for the certificate.
# GOVC (default: govc on PATH) names the binary to run.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
role=vmguard
principal=
group=false
entity=/
dry=false
while getopts n:p:ge:x opt; do
	case $opt in
	n) role=$OPTARG ;;
	p) principal=$OPTARG ;;
	g) group=true ;;
	e) entity=$OPTARG ;;
	x) dry=true ;;
	*) sed -n '2,/^set -eu/p' "$0" | sed 's/^# \{0,1\}//; /^set -eu/d' >&2; exit 2 ;;
	esac
done
govc=${GOVC:-govc}

# The 4th column of every line that is not a comment; "-" means none.
privileges=$(awk '!/^[[:space:]]*(#|$)/ { n = split($4, p, ","); for (i = 1; i <= n; i++) if (p[i] != "-") print p[i] }' \
	"$here/privileges.txt" | sort -u)
if [ -z "$privileges" ]; then
	echo "create-role.sh: no privileges found in $here/privileges.txt" >&2
	exit 1
fi

run() {
	if $dry; then
		echo "$*"
	else
		"$@"
	fi
}

# shellcheck disable=SC2086 # one argument per privilege
if ! $dry && "$govc" role.ls "$role" >/dev/null 2>&1; then
	run "$govc" role.update "$role" $privileges
	echo "role $role updated: $(echo "$privileges" | wc -l) privileges" >&2
else
	run "$govc" role.create "$role" $privileges
	$dry || echo "role $role created: $(echo "$privileges" | wc -l) privileges" >&2
fi

if [ -n "$principal" ]; then
	run "$govc" permissions.set -principal "$principal" -group="$group" -role "$role" -propagate=true "$entity"
	$dry || echo "$principal holds $role on $entity (propagating)" >&2
fi
