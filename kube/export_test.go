package kube

// Settle waits until every event p has started writing is written (or
// failed), for tests that check what was not written.
func (p *PodEvents) Settle() {
	for range cap(p.sem) {
		p.sem <- struct{}{}
	}
	for range cap(p.sem) {
		<-p.sem
	}
}
