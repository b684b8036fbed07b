// Pin the OpenCL 1.2 API: PoCL and every GPU driver we target expose it, so host code
// written against it behaves the same everywhere (no 2.x-only entry points sneak in).
#define CL_TARGET_OPENCL_VERSION 120
#define CL_USE_DEPRECATED_OPENCL_1_2_APIS
#include <CL/cl.h>
#include <CL/cl_ext.h>
