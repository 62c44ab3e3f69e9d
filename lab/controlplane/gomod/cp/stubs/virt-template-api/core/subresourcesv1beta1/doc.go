// Package subresourcesv1beta1 is an empty stand-in (used only by virtctl).
package subresourcesv1beta1
