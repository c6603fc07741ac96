// Package gateway is the node agent: it keeps the vWire ends its node
// should have (persisted, so a restarted gateway programs exactly them
// again) and a reconciler that brings a data-plane backend to that state,
// removing what should not be there, retrying with backoff and resyncing
// periodically. The backends sit behind gateway/dataplane.
package gateway
