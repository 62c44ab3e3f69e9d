// Package template is an empty stand-in (used only by virtctl).
package template
