// Package core is a stand-in for kubevirt.io/virt-template-api/core v0.2.0.
package core

const (
	GroupName            = "template.kubevirt.io"
	SingularResourceName = "virtualmachinetemplate"
	PluralResourceName   = "virtualmachinetemplates"
)
