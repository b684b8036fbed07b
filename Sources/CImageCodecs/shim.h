// Well-kept system codecs (Debian: zlib1g-dev, libpng-dev, libjpeg-dev): gzip for IDX files,
// PNG (libpng simplified API) and JPEG (libjpeg-turbo TurboJPEG API, which reports errors
// instead of exiting) for image folders. No hand-written decoders.
#include <stdio.h>
#include <zlib.h>
#include <png.h>
#include <turbojpeg.h>
