// Package helm holds the tests of vwire's helm chart, deploy/helm/vwire:
// it lints, renders against a real API server, installs and upgrades it.
// It has no code of its own.
package helm
