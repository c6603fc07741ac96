// Package e2e holds vwire's whole-system tests: checks on the module's
// layout and dependencies now, and later the in-process multi-domain
// sandbox (e2e/sandbox) and the network-namespace tests of the real binary
// (e2e/netns). The real components those tests run (etcd's server, later
// SPIRE and CoreDNS) are built from the separate module in e2e/tools.
package e2e
