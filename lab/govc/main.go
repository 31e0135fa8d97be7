// Command govc is VMware's govc, built from govmomi's own command packages at
// the version the lab's simulator pins (go.mod), with the commands vmguard's
// role script (deploy/vsphere/create-role.sh) and an admin checking its work
// need: role.*, permissions.*, session.*, about, ls, find, object.*. It is
// govc's upstream main with fewer commands linked in; the commands themselves
// are unmodified.
package main

import (
	"os"

	"github.com/vmware/govmomi/cli"
	_ "github.com/vmware/govmomi/cli/about"
	_ "github.com/vmware/govmomi/cli/object"
	_ "github.com/vmware/govmomi/cli/permissions"
	_ "github.com/vmware/govmomi/cli/role"
	_ "github.com/vmware/govmomi/cli/session"
	_ "github.com/vmware/govmomi/cli/version"
)

func main() {
	os.Exit(cli.Run(os.Args[1:]))
}
