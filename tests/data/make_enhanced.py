# An enhanced (multi-frame) MR file built with pydicom, geometry and values known: an oblique
# 20 x 24 x 6 stack, NT time points (argv[3], default 3), the slices stored in ORDER (argv[2]),
# rescale 0.5 / -10 in the shared functional groups; slice z of time t holds
# (3 * pixel + 100 z + 1000 t) mod 3000. With --diffusion each time point is a diffusion volume:
# b = 0 for t = 0, else b = 1000 along DIRECTIONS[t] (LPS), in each frame's MR Diffusion
# Sequence. Used by tests/dicom.rs and tests/fuzz.rs.
import sys, numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
out = sys.argv[1]
nx, ny, nz = 20, 24, 6
nt = int(sys.argv[3]) if len(sys.argv) > 3 else 3
row = np.array([0.9848, 0.1736, 0.0]); col = np.array([-0.1736 * 0.9397, 0.9848 * 0.9397, 0.3420])
col = col / np.linalg.norm(col); normal = np.cross(row, col)
origin = np.array([-20.5, 11.25, -30.0]); step = 2.5
ds = Dataset()
ds.file_meta = FileMetaDataset()
ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["mriloop enhanced"])
ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
ds.StudyInstanceUID = generate_uid(entropy_srcs=["study"]); ds.SeriesInstanceUID = generate_uid(entropy_srcs=["series"])
ds.Modality = "MR"; ds.SeriesNumber = 7; ds.SeriesDescription = "enhanced bold"; ds.InstanceNumber = 1
ds.PatientName = "Phantom"; ds.PatientID = "1"; ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
ds.Rows, ds.Columns = ny, nx
ds.SamplesPerPixel = 1; ds.PhotometricInterpretation = "MONOCHROME2"
ds.BitsAllocated = 16; ds.BitsStored = 16; ds.HighBit = 15; ds.PixelRepresentation = 1
ds.RepetitionTime = 2000
ds.NumberOfTemporalPositions = nt
ds.Manufacturer = "Philips"
shared = Dataset()
pm = Dataset(); pm.PixelSpacing = [0.8, 0.9]; pm.SliceThickness = step; pm.SpacingBetweenSlices = step
po = Dataset(); po.ImageOrientationPatient = [float(f"{v:.6f}") for v in list(row) + list(col)]
pv = Dataset(); pv.RescaleSlope = 0.5; pv.RescaleIntercept = -10; pv.RescaleType = "US"
shared.PixelMeasuresSequence = [pm]; shared.PlaneOrientationSequence = [po]; shared.PixelValueTransformationSequence = [pv]
ds.SharedFunctionalGroupsSequence = [shared]
frames, pixels = [], []
ORDER = [int(x) for x in sys.argv[2].split(",")] if len(sys.argv) > 2 else [3, 0, 5, 1, 4, 2]
order = [(t, z) for z in ORDER for t in range(nt)] if "--z-outer" in sys.argv else [(t, z) for t in range(nt) for z in ORDER]
for t, z in order:
    fr = Dataset()
    pp = Dataset(); pp.ImagePositionPatient = [float(f"{v:.6f}") for v in origin + z * step * normal]
    fc = Dataset(); fc.StackID = "1"; fc.InStackPositionNumber = z + 1; fc.TemporalPositionIndex = t + 1
    fc.DimensionIndexValues = [1, z + 1, t + 1]  # (stack, in-stack position, temporal position)
    fr.PlanePositionSequence = [pp]; fr.FrameContentSequence = [fc]
    if "--diffusion" in sys.argv:
        DIRECTIONS = [None, [0.6, 0.0, 0.8], [0.0, -0.28, 0.96], [0.48, 0.6, 0.64]]
        dd = Dataset(); dd.DiffusionBValue = 0.0 if t == 0 else 1000.0
        dd.DiffusionDirectionality = "NONE" if t == 0 else "DIRECTIONAL"
        if t > 0:
            g = Dataset(); g.DiffusionGradientOrientation = DIRECTIONS[t]
            dd.DiffusionGradientDirectionSequence = [g]
        fr.MRDiffusionSequence = [dd]
    frames.append(fr)
    img = (np.arange(nx * ny).reshape(ny, nx) * 3 + z * 100 + t * 1000) % 3000
    pixels.append(img.astype("<i2"))
ds.PerFrameFunctionalGroupsSequence = frames
from pydicom.tag import Tag
dims = []
for pointer in (Tag(0x0020, 0x9056), Tag(0x0020, 0x9057), Tag(0x0020, 0x9128)):
    d = Dataset(); d.DimensionIndexPointer = pointer; d.FunctionalGroupPointer = Tag(0x0020, 0x9111)
    dims.append(d)
ds.DimensionIndexSequence = dims
ds.NumberOfFrames = len(frames)
ds.PixelData = np.stack(pixels).tobytes()
ds.save_as(out, enforce_file_format=True)
