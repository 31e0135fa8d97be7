module vmguard.io/lab/vsphere

go 1.26.0

require github.com/vmware/govmomi v0.56.0
