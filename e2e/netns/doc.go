// Package netns holds the data plane's end-to-end tests: real vwire
// binaries in network namespaces, federated domains discovered through a
// real DNS server (CoreDNS), workloads pinging and carrying TCP and UDP
// over vWires. They run as root (under CI=true, a missing tool fails them).
package netns
