package bench

import "golang.org/x/sys/unix"

func cpuModel() string {
	model, _ := unix.Sysctl("machdep.cpu.brand_string")
	return model
}

func memoryBytes() int64 {
	n, _ := unix.SysctlUint64("hw.memsize")
	return int64(n)
}
