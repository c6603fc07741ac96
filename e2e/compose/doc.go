// Package compose tests vwire as its users deploy it in VM infrastructures
// and data centres: the images, the compose files of deploy/compose, and
// workloads in containers whose sidecars hand their network namespaces to
// the gateway, across three domains on their own Docker networks joined by
// an "internet" network, with Docker as the fault injector (network
// disconnects, kills, restarts, pauses). Its tests need Docker; under
// CI=true they fail without it.
package compose
